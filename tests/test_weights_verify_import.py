"""`weights verify` catches corrupted files; `weights import DIR` installs without a network."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch
from safetensors.torch import load_file

import weights
from tests.support.fake_hf_hub import FakeHub
from tests.support.weights_toy import REPO, make_toy_env
from weights import cli


@pytest.fixture
def env(tmp_path, monkeypatch):
    with FakeHub() as hub:
        yield make_toy_env(tmp_path, monkeypatch, hub)


def run(*args: str) -> int:
    return cli.main(list(args))


def flip_byte(path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_catches_a_corrupted_file(env, capsys):
    root = str(env.root)
    assert run("pull", "--weights-dir", root, "toy") == 0
    capsys.readouterr()
    assert run("verify", "--weights-dir", root, "toy") == 0
    assert "sha256-mismatch" not in capsys.readouterr().err

    flip_byte(env.root / REPO / "ckpt/model.bin")  # same size, different content
    assert run("verify", "--weights-dir", root, "toy") == 1
    err = capsys.readouterr().err
    assert "sha256-mismatch" in err and "ckpt/model.bin" in err

    (env.root / REPO / "ckpt/model.bin").write_bytes(b"short")
    assert run("verify", "--weights-dir", root, "toy", "--size-only") == 1
    assert "size-mismatch" in capsys.readouterr().err


def test_verify_uses_pinned_sha256_and_checks_conversions(env, capsys):
    root = env.root
    pinned = hashlib.sha256(env.config_bytes).hexdigest()
    env.write_manifest(
        "toy",
        [
            {"key": "model", "repo_id": REPO, "filename": "ckpt/model.bin", "license": "MIT",
             "convert": "torch_to_safetensors"},
            {"key": "config", "repo_id": REPO, "filename": "config.json", "sha256": pinned, "license": "MIT"},
        ],
    )  # fmt: skip
    # files copied in by hand: no download record, so only the pinned one can be checked
    (root / REPO / "ckpt").mkdir(parents=True)
    (root / REPO / "ckpt/model.bin").write_bytes(env.model_bytes)
    (root / REPO / "config.json").write_bytes(env.config_bytes)
    assert run("convert", "--weights-dir", str(root), "toy") == 0
    checks = {c.file: c for c in weights.download.verify(["toy"], root=root)}
    assert checks[f"{REPO}/config.json"].status == "ok"
    assert checks[f"{REPO}/ckpt/model.bin"].status == "unpinned"  # reported with its sha256
    assert hashlib.sha256(env.model_bytes).hexdigest() in checks[f"{REPO}/ckpt/model.bin"].detail
    assert checks[f"{REPO}/ckpt/model.bin (converted)"].status == "ok"

    (root / "converted/toy/model.safetensors").write_bytes(b"\x00" * 16)
    (root / REPO / "config.json").write_bytes(b'{"width": 999}')
    assert run("verify", "--weights-dir", str(root), "toy") == 1
    err = capsys.readouterr().err
    assert "unreadable" in err and "sha256-mismatch" in err


def test_import_from_a_weights_dir_copy(env, tmp_path):
    source = tmp_path / "usb"
    assert run("pull", "--weights-dir", str(source), "toy", "--no-convert") == 0
    served = len(env.hub.requests)

    target = tmp_path / "airgapped"
    assert run("import", str(source), "toy", "--weights-dir", str(target)) == 0

    assert len(env.hub.requests) == served  # no network
    assert (target / REPO / "ckpt/model.bin").read_bytes() == env.model_bytes
    weights.check("toy", target)
    assert torch.equal(load_file(weights.locate("toy", "model", target))["head.weight"],
                       env.state_dict["head.weight"])  # fmt: skip


def test_import_from_a_hf_cache_and_from_shipped_conversions(env, tmp_path):
    assert run("pull", "--weights-dir", str(tmp_path / "unused"), "toy", "--hf-cache", "--no-convert") == 0
    target = tmp_path / "a"
    assert run("import", str(env.hf_cache), "toy", "--weights-dir", str(target)) == 0
    weights.check("toy", target)

    # ship only what serving needs: the conversion (no pickle) and the config
    ship = tmp_path / "ship"
    shutil.copytree(target / "converted", ship / "converted")
    (ship / "config.json").write_bytes(env.config_bytes)  # a flat folder works too
    b = tmp_path / "b"
    assert run("import", str(ship), "toy", "--weights-dir", str(b)) == 0
    weights.check("toy", b)
    assert not (b / REPO / "ckpt/model.bin").exists()


def test_import_rejects_a_corrupt_copy(env, tmp_path, capsys):
    env.write_manifest(
        "toy",
        [{"key": "config", "repo_id": REPO, "filename": "config.json", "license": "MIT",
          "sha256": hashlib.sha256(env.config_bytes).hexdigest()}],
    )  # fmt: skip
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_bytes(b'{"width": 1}')
    assert run("import", str(src), "toy", "--weights-dir", str(tmp_path / "w")) == 1
    assert "sha256" in capsys.readouterr().err
    assert weights.find(weights.manifest("toy")[0], tmp_path / "w") is None
    assert run("import", str(tmp_path / "nope"), "toy") == 2
