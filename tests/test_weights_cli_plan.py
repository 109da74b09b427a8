"""`weights pull` picks the served pipelines and says what it will fetch; damaged and mismatching files are
named as such; `serve --pull` downloads in a child process."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import weights
from tests.support.fake_hf_hub import FakeHub
from tests.support.weights_toy import REPO, make_toy_env
from weights import cli
from weights.download import unique_files
from weights.summary import human

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path, monkeypatch):
    with FakeHub() as hub:
        yield make_toy_env(tmp_path, monkeypatch, hub)


def test_pull_defaults_to_the_served_pipelines_and_says_how_much_first(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FAL_ONPREM_MANIFEST_DIR", raising=False)
    served = cli.served_pipelines()
    # every endpoint's own manifest; component manifests (pulled with the pipelines that need them) are not listed
    assert set(served) == {"catvton", "dwpose", "leffa", "liveportrait", "pulid"}
    assert cli.main(["pull", "--dry-run", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    files = unique_files(served)
    total = sum(f.expected_bytes or 0 for f in files)
    assert f"will download {len(files)} file(s), {human(total)}" in out
    assert "yzd-v/DWPose/yolox_l.onnx" in out and "franciszzj/Leffa" in out

    assert cli.main(["pull", "--dry-run", "--all", "--weights-dir", str(tmp_path)]) == 0
    everything = capsys.readouterr().out
    assert "franciszzj/Leffa" in everything
    names = [line.split()[-1] for line in everything.splitlines() if line.startswith("  ")]
    assert len(names) == len(set(names)) == len(unique_files(weights.all_pipelines()))


def test_a_shared_file_is_named_once(env, monkeypatch, capsys):
    env.write_manifest("shared", [{"key": "config", "repo_id": REPO, "filename": "config.json", "license": "MIT"}])
    env.write_manifest("a", [], requires=["shared"])
    env.write_manifest("b", [], requires=["shared"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["pull", "--weights-dir", str(env.root), "a", "b"]) == 1
    err = capsys.readouterr().err
    assert "will download 1 file(s), size unknown" in err
    assert err.count("downloading acme/toy/config.json") == 1
    assert err.count("error: acme/toy/config.json: HF_HUB_OFFLINE") == 1
    assert "not ready: a, b; run `fal-onprem weights pull a b`" in err


def truncate(path: Path, keep: int = 1000) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_a_truncated_file_is_named_at_load_and_pull_fetches_it_again(env, capsys):
    env.write_manifest(
        "toy",
        [{"key": "model", "repo_id": REPO, "filename": "ckpt/model.bin", "size": len(env.model_bytes),
          "license": "MIT"}],
    )  # fmt: skip
    assert cli.main(["pull", "--weights-dir", str(env.root), "toy"]) == 0
    path = env.root / REPO / "ckpt/model.bin"
    truncate(path)

    with pytest.raises(weights.MissingWeights) as err:
        weights.locate("toy", "model", env.root)
    message = str(err.value)
    assert str(path) in message and f"1000 bytes, expected {len(env.model_bytes)}" in message
    assert "fal-onprem weights pull" in message
    assert weights.state(weights.manifest("toy")[0], env.root) == "damaged"

    capsys.readouterr()
    assert cli.main(["pull", "--weights-dir", str(env.root), "toy"]) == 0
    assert "fetching again" in capsys.readouterr().err
    assert path.read_bytes() == env.model_bytes
    assert weights.locate("toy", "model", env.root) == path


def test_import_names_a_mismatch_and_takes_it_only_with_the_flag(env, tmp_path, capsys):
    config_sha = hashlib.sha256(env.config_bytes).hexdigest()
    env.write_manifest(
        "toy",
        [{"key": "model", "repo_id": REPO, "filename": "ckpt/model.bin", "size": len(env.model_bytes),
          "license": "MIT"},
         {"key": "config", "repo_id": REPO, "filename": "config.json", "sha256": config_sha, "license": "MIT"}],
    )  # fmt: skip
    src = tmp_path / "usb"
    src.mkdir()
    (src / "model.bin").write_bytes(env.model_bytes[:5000])  # a truncated copy
    (src / "config.json").write_bytes(b'{"width": 1}')  # another file under the same name
    target = tmp_path / "w"

    assert cli.main(["import", str(src), "toy", "--weights-dir", str(target)]) == 1
    err = capsys.readouterr().err
    assert f"mismatch: {src / 'model.bin'}: size 5000 bytes, expected {len(env.model_bytes)}" in err
    assert "mismatch:" in err and "sha256" in err and "not found" not in err
    assert weights.find(weights.manifest("toy")[0], target) is None

    assert cli.main(["import", str(src), "toy", "--weights-dir", str(target), "--accept-mismatch"]) == 0
    err = capsys.readouterr().err
    assert err.count("--accept-mismatch") == 2  # one warning per file taken on purpose
    weights.check("toy", target)  # served as accepted, not reported damaged
    assert weights.record(weights.manifest("toy")[0], target)["accepted_mismatch"].startswith("size 5000")
    assert cli.main(["verify", "toy", "--weights-dir", str(target)]) == 0
    assert capsys.readouterr().out.count("accepted") == 2


def test_serve_pull_downloads_in_a_child_process(tmp_path):
    """The API process runs `weights pull` as a child and imports no model library itself."""
    code = (
        "import sys\n"
        "from server.cli import pull_in_child\n"
        "from server.config import Settings\n"
        f"status = pull_in_child(Settings(weights_dir={str(tmp_path / 'w')!r}))\n"
        "libs = ('torch', 'onnxruntime', 'cv2', 'diffusers', 'transformers')\n"
        "print(status, [m for m in libs if m in sys.modules])\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == "1 []"  # the child failed (offline), the API process loaded nothing
    assert "HF_HUB_OFFLINE" in proc.stderr and "yzd-v/DWPose/yolox_l.onnx" in proc.stderr  # the child's report
    assert json.dumps("weights pull exited with 1")[1:-1] in proc.stderr
