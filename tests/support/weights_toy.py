"""A toy weights setup for the weights tests: a manifest folder pointing at a FakeHub, an isolated
Hugging Face cache and weights dir."""

from __future__ import annotations

import io
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants as hf_constants
import huggingface_hub.utils.logging  # noqa: F401  (sets up the library's log handler)
import pytest
import torch

from tests.support.fake_hf_hub import FakeHub

REPO = "acme/toy"
CHUNK = 64 * 1024  # huggingface_hub's download chunk for the tests (10 MB by default)


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def toy_state_dict(seed: int = 0, width: int = 256) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "encoder.weight": torch.randn(width, width, generator=g),
        "encoder.bias": torch.randn(width, generator=g),
        "head.weight": torch.randn(8, width, generator=g),
        "steps": torch.tensor(3),
    }


@dataclass
class ToyEnv:
    hub: FakeHub
    root: Path  # weights dir
    manifests: Path
    hf_cache: Path
    state_dict: dict[str, torch.Tensor]
    model_bytes: bytes
    config_bytes: bytes

    def write_manifest(self, name: str, files: list[dict], **extra: object) -> None:
        (self.manifests / f"{name}.json").write_text(json.dumps({"pipeline": name, **extra, "files": files}))


def make_toy_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: FakeHub) -> ToyEnv:
    """Pipeline ``toy``: a pickled state dict (converted to safetensors) and a config file."""
    sd = toy_state_dict()
    # a checkpoint wrapped as many are: {'state_dict': ..., 'epoch': ...}; ~270 KB
    model = torch_bytes({"state_dict": sd, "epoch": 7})
    config = json.dumps({"width": 256}).encode()
    hub.add(REPO, "ckpt/model.bin", model)
    hub.add(REPO, "config.json", config)

    manifests = tmp_path / "manifests"
    manifests.mkdir()
    hf_cache = tmp_path / "hf-cache"
    monkeypatch.setenv("FAL_ONPREM_MANIFEST_DIR", str(manifests))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FAL_ONPREM_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    # huggingface_hub keeps whole chunks of a dropped transfer; small chunks keep the test files small
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    # its log handler holds the stderr of the moment it was made; point it at pytest's current one
    for handler in logging.getLogger("huggingface_hub").handlers:
        if isinstance(handler, logging.StreamHandler):
            monkeypatch.setattr(handler, "stream", sys.stderr)
    env = ToyEnv(hub, tmp_path / "weights", manifests, hf_cache, sd, model, config)
    env.write_manifest(
        "toy",
        [
            {"key": "model", "repo_id": REPO, "filename": "ckpt/model.bin", "size": len(model),
             "license": "MIT", "convert": "torch_to_safetensors", "params": 256 * 256 + 256 + 8 * 256,
             "dtype": "fp32"},
            {"key": "config", "repo_id": REPO, "filename": "config.json", "license": "MIT"},
        ],
    )  # fmt: skip
    return env
