"""`fal-onprem weights pull cat-vton`: the endpoint's name is accepted and the non-commercial licence is shown."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import weights
from tests.support.fake_hf_hub import FakeHub
from weights import cli


@pytest.mark.parametrize("name", ["cat-vton", "fal-ai/cat-vton", "catvton"])
def test_pull_prints_the_licence_note(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    shutil.copy(weights.MANIFEST_DIR / "catvton.json", manifests)  # without DensePose / SCHP: no other hosts
    monkeypatch.setenv(weights.MANIFEST_DIR_ENV, str(manifests))
    with FakeHub() as hub:  # knows no repo: every download is a 404, but the note comes first
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code = cli.main(["pull", "--weights-dir", str(tmp_path / "w"), name])
    out = capsys.readouterr().out
    assert code == 1
    assert "note: catvton uses weights under a restrictive licence: CC BY-NC-SA 4.0 (non-commercial)" in out


def test_unknown_name_is_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pull", "cat-vtonx"]) == 2
    assert "unknown pipeline(s) cat-vtonx" in capsys.readouterr().err
