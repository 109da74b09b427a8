"""`fal-onprem weights pull` against a loopback fake Hub, through huggingface_hub's real download code."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file

import weights
from tests.support.fake_hf_hub import FakeHub
from tests.support.weights_toy import REPO, ToyEnv, make_toy_env
from weights import cli


@pytest.fixture
def env(tmp_path, monkeypatch):
    with FakeHub() as hub:
        yield make_toy_env(tmp_path, monkeypatch, hub)


def pull(env: ToyEnv, *args: str) -> int:
    return cli.main(["pull", "--weights-dir", str(env.root), *args])


def test_pull_downloads_verifies_and_converts(env, capsys):
    with pytest.raises(weights.MissingWeights) as err:
        weights.check("toy", env.root)
    assert err.value.pull_command == f"fal-onprem weights pull --weights-dir {env.root} toy"

    assert pull(env, "toy") == 0

    raw = env.root / REPO / "ckpt/model.bin"
    assert raw.read_bytes() == env.model_bytes
    assert (env.root / REPO / "config.json").read_bytes() == env.config_bytes
    weights.check("toy", env.root)  # ready now
    converted = weights.locate("toy", "model", env.root)
    assert converted == env.root / "converted" / "toy" / "model.safetensors"
    loaded = load_file(converted)
    assert set(loaded) == set(env.state_dict)
    for k, v in env.state_dict.items():
        assert torch.equal(loaded[k], v)
    # the Hub's LFS etag (sha256) is recorded for later `verify`
    assert weights.download.recorded_sha256(weights.manifest("toy")[0], env.root) == (
        hashlib.sha256(env.model_bytes).hexdigest()
    )
    # a second pull downloads nothing
    n_gets = len([r for r in env.hub.requests if r.method == "GET"])
    assert pull(env, "toy") == 0
    assert len([r for r in env.hub.requests if r.method == "GET"]) == n_gets
    assert "2 already present" in capsys.readouterr().out


def test_dropped_connection_is_resumed_with_a_range_request(env):
    path = f"/{REPO}/resolve/main/ckpt/model.bin"
    env.hub.drop_after[path] = 100_000

    assert pull(env, "toy", "--no-convert") == 0

    assert (env.root / REPO / "ckpt/model.bin").read_bytes() == env.model_bytes
    # every byte received is kept: the retry asks for the rest only
    gets = env.hub.gets("ckpt/model.bin")
    assert [g.range for g in gets] == [None, "bytes=100000-"]
    assert env.hub.bytes_served("ckpt/model.bin") == len(env.model_bytes)


def test_interrupted_pull_resumes_on_the_next_run(env, capsys):
    path = f"/{REPO}/resolve/main/ckpt/model.bin"
    env.hub.fail_after[path] = 120_000  # first run: 120 kB, then the server fails

    assert pull(env, "toy") == 1
    err = capsys.readouterr().err
    assert "ckpt/model.bin" in err and "Traceback" not in err
    assert "not ready" in err and "fal-onprem weights pull" in err
    kept = 120_000
    partial = list((env.root / REPO / "ckpt").glob("model.bin.*.incomplete"))
    assert len(partial) == 1 and partial[0].stat().st_size == kept > 0
    assert not (env.root / REPO / "ckpt/model.bin").exists()

    env.hub.fail_after.clear()
    assert pull(env, "toy") == 0

    assert (env.root / REPO / "ckpt/model.bin").read_bytes() == env.model_bytes
    assert env.hub.gets("ckpt/model.bin")[-1].range == f"bytes={kept}-"
    assert not list((env.root / REPO / "ckpt").glob("*.incomplete"))
    weights.check("toy", env.root)


def test_corrupt_download_is_rejected_and_not_left_behind(env):
    env.write_manifest(
        "toy",
        [{"key": "model", "repo_id": REPO, "filename": "ckpt/model.bin", "sha256": "0" * 64, "license": "MIT"}],
    )
    assert pull(env, "toy") == 1
    assert not (env.root / REPO / "ckpt/model.bin").exists()


def test_pull_into_the_hf_cache_is_reused(env):
    assert pull(env, "toy", "--hf-cache", "--no-convert") == 0

    assert not (env.root / REPO).exists()
    model = weights.manifest("toy")[0]
    found = weights.find(model, env.root)
    assert found is not None and str(found).startswith(str(env.hf_cache))
    assert found.read_bytes() == env.model_bytes
    # convert reads from the cache; pull finds everything present and downloads nothing more
    n_gets = len(env.hub.requests)
    assert cli.main(["convert", "--weights-dir", str(env.root), "toy"]) == 0
    assert pull(env, "toy") == 0
    assert len(env.hub.requests) == n_gets
    weights.check("toy", env.root)


def test_token_is_sent_from_hf_token(env, monkeypatch, capsys):
    env.hub.require_token[REPO] = "secret"
    assert pull(env, "toy") == 1
    assert "HF_TOKEN" in capsys.readouterr().err  # tells the user what to do

    monkeypatch.setenv("HF_TOKEN", "secret")
    assert pull(env, "toy") == 0
    assert env.hub.gets("config.json")[-1].authorization == "Bearer secret"


def test_lfs_redirect_to_a_cdn_does_not_leak_the_token(env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret")
    with FakeHub() as cdn:
        env.hub.cdn = cdn
        assert pull(env, "toy") == 0
    assert (env.root / REPO / "ckpt/model.bin").read_bytes() == env.model_bytes
    assert env.hub.gets("model.bin") == []  # the Hub only answered HEAD with a redirect
    sha = hashlib.sha256(env.model_bytes).hexdigest()
    (get,) = cdn.gets(f"/raw/{sha}")
    assert get.authorization is None
    assert all(r.authorization == "Bearer secret" for r in env.hub.requests)


def test_xet_stored_files_take_the_resumable_http_path_when_xet_is_disabled(env, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    env.hub.xet = True
    env.hub.drop_after[f"/{REPO}/resolve/main/ckpt/model.bin"] = 100_000
    assert pull(env, "toy") == 0
    assert (env.root / REPO / "ckpt/model.bin").read_bytes() == env.model_bytes
    assert env.hub.gets("ckpt/model.bin")[-1].range == "bytes=100000-"
    weights.check("toy", env.root)


def test_plain_url_source(env):
    content = b"x" * 50_000
    env.hub.raw["face.pth"] = content
    env.write_manifest(
        "urlpipe",
        [{"key": "face", "repo_id": "someone/release", "filename": "face.pth", "url": f"{env.hub.url}/raw/face.pth",
          "size": len(content), "sha256": hashlib.sha256(content).hexdigest(), "license": "MIT"}],
    )  # fmt: skip
    assert pull(env, "urlpipe") == 0
    assert (env.root / "someone/release/face.pth").read_bytes() == content


def test_missing_repo_and_offline_mode_are_messages_not_traces(env, monkeypatch, capsys):
    env.write_manifest("ghost", [{"key": "x", "repo_id": "acme/ghost", "filename": "x.bin", "license": "MIT"}])
    assert pull(env, "ghost") == 1
    err = capsys.readouterr().err
    assert "acme/ghost" in err and "Traceback" not in err

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pull(env, "toy") == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert env.hub.gets("model.bin") == []

    assert cli.main(["pull", "nosuchpipeline"]) == 2
    assert "unknown pipeline" in capsys.readouterr().err


def test_pull_missing_for_serve(env):
    assert weights.pull_missing(["toy"], env.root) == {}
    weights.check("toy", env.root)


def test_delete_source_keeps_only_what_is_served(env):
    assert pull(env, "toy", "--delete-source") == 0
    assert not (env.root / REPO / "ckpt/model.bin").exists()
    assert (env.root / REPO / "config.json").exists()  # nothing to convert: kept
    weights.check("toy", env.root)
    n_gets = len(env.hub.requests)
    assert pull(env, "toy") == 0  # ready: the deleted original is not fetched again
    assert len(env.hub.requests) == n_gets


def test_shipped_manifest_pulls_and_runs_a_model_packages_converter(env, monkeypatch):
    """`pull densepose` with the real manifest: the converter is imported from pipelines.common by name."""
    import pickle
    from collections import OrderedDict

    import numpy as np

    monkeypatch.delenv("FAL_ONPREM_MANIFEST_DIR")
    (entry,) = weights.manifest("densepose")
    arrays = OrderedDict(
        [
            ("backbone.fpn_lateral2.weight", np.full((4, 4, 1, 1), 0.5, np.float32)),
            ("x.bias", np.arange(3, dtype=np.float32)),
        ]
    )
    env.hub.add(entry.repo_id, entry.filename, pickle.dumps({"model": arrays, "__author__": "test"}, protocol=2))

    assert pull(env, "densepose") == 0

    path = weights.locate("densepose", "model", env.root)
    assert path == env.root / "converted" / "densepose" / "model.safetensors"
    out = load_file(path)
    assert sorted(out) == sorted(arrays)
    assert torch.equal(out["x.bias"], torch.arange(3, dtype=torch.float32))
