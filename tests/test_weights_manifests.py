"""The shipped manifests, the lookup rules (requires, conversions), MissingWeights and the summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors.torch import save_file

import weights
from weights import cli
from weights.convert import converter
from weights.summary import needs

MANIFESTS = sorted(weights.MANIFEST_DIR.glob("*.json"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_shipped_manifest_is_well_formed(path: Path, monkeypatch):
    monkeypatch.delenv("FAL_ONPREM_MANIFEST_DIR", raising=False)
    raw = json.loads(path.read_text())
    files = weights.manifest_info(path.stem)["files"]
    assert files and len(files) == len(raw["files"])
    keys = [f.key for f in files]
    assert len(keys) == len(set(keys)), "keys are unique within a manifest"
    for f in files:
        assert f.url or re.fullmatch(r"[\w.-]+/[\w.-]+", f.repo_id), f.repo_id
        assert f.filename and not f.filename.startswith("/")
        assert f.license, f"{f.key}: licence missing"
        assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)
        assert f.expected_bytes is None or f.expected_bytes > 0
        if f.convert:  # the converter resolves (model packages own theirs; imported by name)
            assert callable(converter(f.convert).function())
    for dep in raw.get("requires", []):
        assert isinstance(dep, str) and dep != path.stem


def test_restricted_licences_are_flagged(capsys, monkeypatch):
    monkeypatch.delenv("FAL_ONPREM_MANIFEST_DIR", raising=False)
    catvton = {f.key: f for f in weights.manifest_info("catvton")["files"]}
    assert catvton["attention"].license_restricted
    assert not catvton["vae"].license_restricted
    pulid = {f.key: f for f in weights.manifest_info("pulid")["files"]}
    assert pulid["antelopev2_arcface"].license_restricted and not pulid["unet"].license_restricted
    assert cli.main(["list", "--pipeline", "catvton", "--weights-dir", "/nonexistent"]) == 0
    out = capsys.readouterr().out
    assert "RESTRICTED: CC BY-NC-SA 4.0" in out and "missing" in out


def test_summary_is_computed_from_the_manifests(monkeypatch, capsys):
    monkeypatch.delenv("FAL_ONPREM_MANIFEST_DIR", raising=False)
    leffa = needs("leffa")
    # 5.2 B params kept in fp16 on the GPU; the split conversion is fp16 too
    assert leffa.gpu_weights >= 5_218_604_271 * 2
    assert leffa.converted >= 5_218_604_271 * 2
    assert leffa.download >= 20_900_000_000
    assert cli.main(["list", "--summary", "--markdown", "--pipeline", "leffa", "--pipeline", "pulid"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| pipeline |")
    assert re.search(r"\| leffa \| \d+ \| 2\d\.\d GB", out)
    assert "**insightface pretrained models: non-commercial research only**" in out


def _toy_manifests(tmp_path: Path, monkeypatch) -> Path:
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "shared.json").write_text(json.dumps({"files": [
        {"key": "det", "repo_id": "a/shared", "filename": "det.bin", "license": "MIT",
         "convert": "torch_to_safetensors"}]}))  # fmt: skip
    (d / "pipe.json").write_text(json.dumps({"requires": ["shared"], "files": [
        {"key": "main", "repo_id": "a/pipe", "filename": "main.safetensors", "license": "MIT"}]}))  # fmt: skip
    monkeypatch.setenv("FAL_ONPREM_MANIFEST_DIR", str(d))
    monkeypatch.delenv("FAL_ONPREM_WEIGHTS_DIR", raising=False)
    return d


def test_requires_and_conversions_decide_readiness(tmp_path, monkeypatch):
    _toy_manifests(tmp_path, monkeypatch)
    root = tmp_path / "w"
    assert [f.key for f in weights.manifest("pipe")] == ["main", "det"]

    err = weights.missing_weights("pipe", root)
    assert err is not None and [f.key for f in err.missing] == ["main", "det"]
    assert err.pull_command == f"fal-onprem weights pull --weights-dir {root} pipe"

    (root / "a/pipe").mkdir(parents=True)
    save_file({}, str(root / "a/pipe/main.safetensors"))
    (root / "a/shared").mkdir(parents=True)
    (root / "a/shared/det.bin").write_bytes(b"pickle")
    err = weights.missing_weights("pipe", root)
    assert err is not None and err.missing == [] and [f.key for f in err.unconverted] == ["det"]
    assert err.pull_command == f"fal-onprem weights convert --weights-dir {root} pipe"
    with pytest.raises(weights.MissingWeights, match="convert"):
        weights.locate("pipe", "det", root)
    assert weights.locate_source("pipe", "det", root) == root / "a/shared/det.bin"

    (root / "converted/shared").mkdir(parents=True)
    save_file({}, str(root / "converted/shared/det.safetensors"))
    weights.check("pipe", root)
    assert weights.locate("pipe", "det", root) == root / "converted/shared/det.safetensors"
    assert weights.locate("pipe", "main", root) == root / "a/pipe/main.safetensors"


def test_missing_weights_survives_pickling(tmp_path, monkeypatch):
    import pickle

    _toy_manifests(tmp_path, monkeypatch)
    err = weights.missing_weights("pipe", tmp_path / "w")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, weights.MissingWeights)
    assert (back.pipeline, back.missing, back.pull_command, str(back)) == (
        err.pipeline, err.missing, err.pull_command, str(err),
    )  # fmt: skip


def test_default_weights_dir_gives_the_short_command(tmp_path, monkeypatch):
    _toy_manifests(tmp_path, monkeypatch)
    monkeypatch.setenv("FAL_ONPREM_WEIGHTS_DIR", str(tmp_path / "w"))
    err = weights.missing_weights("pipe")
    assert err is not None and err.pull_command == "fal-onprem weights pull pipe"
    assert "fal-onprem weights pull pipe" in str(err)
    with pytest.raises(KeyError):
        weights.locate("pipe", "nope")


def test_readme_table_is_generated_from_the_manifests(tmp_path, monkeypatch):
    from weights.summary import BEGIN, END, README, update_readme

    monkeypatch.delenv("FAL_ONPREM_MANIFEST_DIR", raising=False)
    shipped = README.read_text()
    block = shipped.split(BEGIN)[1].split(END)[0]
    for p in weights.all_pipelines():
        assert f"| {p} |" in block, f"{p} missing from weights/README.md: run python -m weights.summary"
    copy = tmp_path / "README.md"
    copy.write_text(f"intro\n{BEGIN}\nstale\n{END}\noutro\n")
    assert update_readme(copy)
    text = copy.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale" not in text
    assert "| leffa |" in text and not update_readme(copy)


def test_a_broken_manifest_is_a_message(tmp_path, monkeypatch, capsys):
    d = _toy_manifests(tmp_path, monkeypatch)
    (d / "broken.json").write_text('{"files": [{"key": "x"}]}')  # no repo_id / filename
    assert cli.main(["list", "--pipeline", "broken"]) == 2
    assert "broken.json" in capsys.readouterr().err
    (d / "broken.json").write_text("{not json")
    with pytest.raises(weights.ManifestError):
        weights.manifest("broken")
