"""Start a real ``fal-onprem serve`` on loopback for end-to-end tests (bounded start/stop)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
ECHO_MODULE = "tests.support.echo_pipeline,tests.support.unbuilt_endpoint"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``serve [--tiny]`` in a child process; ``restart()`` keeps its data dir (and so its jobs)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        wait_for: tuple[str, ...] = ("test/echo",),
        scheme: str = "http",
        tiny: bool = True,
        ready_workers: int = 1,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_args = extra_args or []
        self.env = env or {}
        self.wait_for = wait_for
        self.scheme = scheme
        self.tiny = tiny
        self.ready_workers = ready_workers  # wait until this many workers serve each of wait_for
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"

    @property
    def auth_headers(self) -> dict[str, str]:
        """A key of the server's own when it has keys (``/readyz`` details need one then)."""
        keys = self.env.get("FAL_ONPREM_API_KEYS", "")
        return {"Authorization": f"Key {keys.split(',')[0]}"} if keys else {}

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0, wait_ready: bool = True) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "FAL_ONPREM_PIPELINE_MODULES": ECHO_MODULE,
            "FAL_ONPREM_JOB_LEASE_S": "5",
            **self.env,
        }
        cmd = [
            sys.executable, "-m", "server.cli", "serve", *(["--tiny"] if self.tiny else []), "--host", "127.0.0.1",
            "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra_args,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        if wait_ready:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.url}/readyz", headers=self.auth_headers, timeout=2, verify=False)
                last = r.json()
                states = last.get("pipelines", {})
                if all(self._settled(states.get(e, {})) for e in self.wait_for):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s: {last}\n{self.log_tail()}")

    def _settled(self, pipeline: dict) -> bool:
        ready = [w for w in pipeline.get("workers", []) if w.get("state") == "ready"]
        return pipeline.get("state") == "failed" or len(ready) >= self.ready_workers

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, **kwargs: float) -> None:
        self.stop()
        self.start(**kwargs)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
