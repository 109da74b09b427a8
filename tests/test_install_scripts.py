"""scripts/serve.sh and scripts/test.sh: which locked set they install, and when serve.sh reinstalls.

The scripts run for real in a copy of the repository's scripts; the venv's `python`, `uv` and `fal-onprem`
and the host's `nvidia-smi` are small recorders, so nothing is downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDER = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS"\n'
FAKE_UV = '#!/bin/sh\nif [ "$1" = --version ]; then echo "uv $UV_FAKE_VERSION (x86_64)"; exit 0; fi\n' + RECORDER[10:]


def uv_version() -> str:
    for line in (ROOT / "scripts" / "env.sh").read_text().splitlines():
        if line.startswith("UV_VERSION="):
            return line.split("=", 1)[1].split()[0]
    raise AssertionError("UV_VERSION not found in scripts/env.sh")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    for name in ("uv.lock", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"\n')
    (tmp_path / "host-bin").mkdir()
    for folder, name, text in [
        (bin_dir, "python", RECORDER),
        (bin_dir, "uv", FAKE_UV),
        (bin_dir, "fal-onprem", RECORDER),
        (bin_dir, "ruff", RECORDER),
        (tmp_path / "host-bin", "npm", RECORDER),
    ]:
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return tmp_path


def run(repo: Path, script: str, *args: str, gpu: bool = False, **env: str) -> list[str]:
    calls = repo / "calls.txt"
    calls.unlink(missing_ok=True)
    host_bin = repo / "host-bin"
    if gpu:
        (host_bin / "nvidia-smi").write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100"\n')
        (host_bin / "nvidia-smi").chmod(0o755)
    # PATH without the real nvidia-smi: only the recorder (when gpu) and the basic tools
    path = f"{host_bin}:/usr/bin:/bin"
    env |= {"PATH": path, "CALLS": str(calls), "UV_FAKE_VERSION": uv_version(), "HOME": str(repo)}
    subprocess.run(["bash", str(repo / "scripts" / script), *args], cwd=repo, env=env, check=True, timeout=60)
    return calls.read_text().splitlines() if calls.exists() else []


def test_serve_installs_the_cpu_set_once_then_starts_without_reinstalling(repo):
    assert run(repo, "serve.sh", "--tiny") == [
        "uv sync --compile-bytecode --frozen --inexact --extra cpu",
        "fal-onprem serve --tiny",
    ]
    assert run(repo, "serve.sh", "--tiny") == ["fal-onprem serve --tiny"]


def test_serve_reinstalls_after_the_lock_changes(repo):
    run(repo, "serve.sh")
    with (repo / "uv.lock").open("a") as f:
        f.write("\n# changed\n")
    assert run(repo, "serve.sh")[0] == "uv sync --compile-bytecode --frozen --inexact --extra cpu"


def test_a_gpu_host_gets_the_gpu_build_from_both_scripts(repo):
    assert run(repo, "serve.sh", gpu=True)[0] == "uv sync --compile-bytecode --frozen --inexact --extra gpu"
    calls = run(repo, "test.sh", "-k", "x", gpu=True)
    assert calls[0] == "uv sync --compile-bytecode --locked --extra gpu --extra dev"
    assert calls[-1] == "python -m pytest -k x"


def test_a_forced_choice_wins_over_nvidia_smi_and_reinstalls(repo):
    run(repo, "serve.sh", gpu=True)
    calls = run(repo, "serve.sh", gpu=True, FAL_ONPREM_ACCEL="cpu")
    assert calls[0] == "uv sync --compile-bytecode --frozen --inexact --extra cpu"
