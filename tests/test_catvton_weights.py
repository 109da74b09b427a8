"""CatVTON weights: `weights pull cat-vton` shows the non-commercial licence; missing files name the pull command."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import weights
from pipelines.contract import WeightSource
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


def test_real_source_without_files_names_the_pull_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.catvton.networks import load_networks

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.MissingWeights) as err:
        load_networks(WeightSource.real(tmp_path / "w"))
    assert "fal-onprem weights pull" in err.value.pull_command and "catvton" in err.value.pull_command
