"""`serve` never leaves worker processes behind, whether it is stopped or killed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.live_server import LiveServer


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_workers_exit_with_the_serve_process(tmp_path: Path, sig: signal.Signals) -> None:
    server = LiveServer(tmp_path)
    server.start()
    assert server.proc is not None
    workers = children(server.proc.pid)
    assert workers, "serve started no worker process"
    server.proc.send_signal(sig)
    server.proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftover = [w for w in workers if alive(w)]
    for w in leftover:  # do not leak into the rest of the test session
        os.kill(w, signal.SIGKILL)
    assert leftover == []
