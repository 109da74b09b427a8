"""``fal-onprem`` command line: serve, worker, weights.

Flags become ``FAL_ONPREM_*`` environment variables, so the API, every worker child process and
``Settings()`` all see one configuration.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.config import Settings

log = logging.getLogger("fal_onprem")

WORKER_RESTART_DELAY_S = 2.0  # before restarting a worker that died within WORKER_MIN_UPTIME_S of its start
WORKER_MIN_UPTIME_S = 30.0
WATCH_INTERVAL_S = 0.5


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="SQLite job store and stored files (env FAL_ONPREM_DATA_DIR)")
    p.add_argument("--weights-dir", help="model weights folder (env FAL_ONPREM_WEIGHTS_DIR)")
    p.add_argument("--store-url", help="job store URL, default sqlite:///<data-dir>/jobs.sqlite")
    p.add_argument("--tiny", action="store_true", help="tiny random-weight pipelines (try the API without weights)")
    p.add_argument(
        "--random-full", action="store_true", help="full-size pipelines with random weights (GPU benchmarks)"
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING (env FAL_ONPREM_LOG_LEVEL)")
    p.add_argument("--log-format", choices=["text", "json"], help="env FAL_ONPREM_LOG_FORMAT")


def _apply_env(args: argparse.Namespace) -> None:
    """Turn flags into FAL_ONPREM_* variables (inherited by child processes)."""
    mapping = {
        "data_dir": "DATA_DIR",
        "weights_dir": "WEIGHTS_DIR",
        "store_url": "STORE_URL",
        "log_level": "LOG_LEVEL",
        "log_format": "LOG_FORMAT",
        "host": "HOST",
        "port": "PORT",
        "public_url": "PUBLIC_URL",
        "api_keys": "API_KEYS",
    }
    for attr, env in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            os.environ[f"FAL_ONPREM_{env}"] = str(value)
    if getattr(args, "tiny", False):
        os.environ["FAL_ONPREM_WEIGHTS_SOURCE"] = "tiny"
    elif getattr(args, "random_full", False):
        os.environ["FAL_ONPREM_WEIGHTS_SOURCE"] = "random_full"
    if getattr(args, "insecure_no_auth", False):
        os.environ["FAL_ONPREM_INSECURE_NO_AUTH"] = "1"


def visible_devices() -> list[str]:
    """CUDA devices visible to this process (via nvidia-smi, so the parent never imports torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return []
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        count = min(count, len([v for v in visible.split(",") if v.strip()]))
    return [f"cuda:{i}" for i in range(count)]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _die_with_parent() -> None:
    """In a forked child: ask Linux to SIGTERM us when the parent dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _exit_on_sigterm() -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown; turn that into SystemExit so the
    ``finally`` that stops the workers runs instead of the process dying on the spot."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


class WorkerSupervisor:
    """Keeps one worker child process per device slot alive (a crashed worker is restarted).

    Slots, not device names, identify workers: ``--device cuda:0 --device cuda:0`` runs two workers
    on one GPU (e.g. to overlap CPU-bound preprocessing), and each is restarted on its own. When a
    worker dies, its jobs are handed back at once (``release_dead_worker``) rather than after their
    lease, so re-runs start within seconds; once ``stopping`` is set (shutdown) nothing is restarted.
    """

    def __init__(self, devices: list[str], store_url: str | None = None, max_attempts: int = 2) -> None:
        self.devices = devices
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.stopping = threading.Event()
        self.store_url = store_url
        self.max_attempts = max_attempts

    def _spawn(self, slot: int) -> None:
        device = self.devices[slot]
        cmd = [sys.executable, "-m", "server.cli", "worker", "--device", device, "--parent-pid", str(os.getpid())]
        self.procs[slot] = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
        self.started[slot] = time.monotonic()
        log.info("started worker pid=%d device=%s", self.procs[slot].pid, device)

    def start(self) -> None:
        for slot in range(len(self.devices)):
            self._spawn(slot)
        threading.Thread(target=self._watch, daemon=True, name="supervisor").start()

    def _watch(self) -> None:
        while not self.stopping.wait(WATCH_INTERVAL_S):
            for slot, proc in list(self.procs.items()):
                if proc.poll() is None or self.stopping.is_set():
                    continue
                self._release(self.devices[slot], proc.pid)
                log.warning("worker on %s exited with %s; restarting", self.devices[slot], proc.returncode)
                crash_loop = time.monotonic() - self.started[slot] < WORKER_MIN_UPTIME_S
                if crash_loop and self.stopping.wait(WORKER_RESTART_DELAY_S):  # back off, unless shutting down
                    return
                if not self.stopping.is_set():
                    self._spawn(slot)

    def _release(self, device: str, pid: int) -> None:
        """Hand the dead worker's jobs back now (a SIGKILL gives it no chance to do it itself)."""
        if self.store_url is None:
            return
        from server.store import open_store
        from server.worker.identity import worker_id

        try:
            store = open_store(self.store_url)
            try:
                released = store.release_dead_worker(worker_id(device, pid), self.max_attempts)
            finally:
                store.close()
        except Exception:  # the lease still runs out: never let this stop the supervisor
            log.exception("could not release the jobs of worker pid=%d", pid)
            return
        if released:
            log.warning("worker pid=%d died holding %d job(s): recovered now", pid, len(released))

    def stop(self) -> None:
        self.stopping.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def pull_in_child(settings: Settings) -> int:
    """``serve --pull``: download and convert the enabled pipelines' weights in a child process (the
    conversions import torch; the API process never does). Returns the child's exit status."""
    from pipelines import registry

    wanted = sorted(
        {
            spec.pipeline.split(".")[1]  # "pipelines.<name>.pipeline:Class" -> manifest name
            for spec in registry.endpoints().values()
            if spec.pipeline and spec.pipeline.startswith("pipelines.") and settings.pipeline(spec.endpoint_id).enabled
        }
    )
    command = [sys.executable, "-m", "weights.cli", "pull", "--weights-dir", str(settings.weights_dir), *wanted]
    log.info("pulling weights: %s", shlex.join(command))
    status = subprocess.run(command, check=False).returncode
    if status:
        log.warning("weights pull exited with %d: pipelines without weights answer 503 (see above)", status)
    return status


def _shutdown_aware_server(config: Any, on_exit_signal: Callable[[], None]) -> Any:
    """A uvicorn server that calls ``on_exit_signal`` as soon as SIGTERM/SIGINT arrives."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            on_exit_signal()
            super().handle_exit(sig, frame)

    return Server(config)


def cmd_serve(args: argparse.Namespace) -> int:
    _apply_env(args)
    from server.config import Settings
    from server.logs import setup_logging

    settings = Settings()
    setup_logging(settings.log_level, settings.log_format)
    if not settings.key_list and not _is_loopback(settings.host) and not settings.insecure_no_auth:
        log.error(
            "refusing to serve on %s without API keys: set FAL_ONPREM_API_KEYS or pass --insecure-no-auth",
            settings.host,
        )
        return 2
    if args.pull:
        pull_in_child(settings)

    import uvicorn

    from server.app import create_app
    from server.http_protocol import CoalescingHttpToolsProtocol

    devices = [] if args.no_worker else (args.device or visible_devices() or ["cpu"])
    supervisor = WorkerSupervisor(devices, settings.resolved_store_url, settings.max_attempts)
    supervisor.start()
    log.info("API on %s:%d, workers on %s", settings.host, settings.port, ", ".join(devices) or "none")
    _exit_on_sigterm()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        http=CoalescingHttpToolsProtocol,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep our handlers (text or JSON) for uvicorn too
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        timeout_graceful_shutdown=5,
    )

    def on_exit_signal() -> None:
        # before anything else: a worker that got the same signal (process group) must not be restarted,
        # and waiting runs answer a JSON 503 instead of being cut off by the graceful-shutdown timeout
        supervisor.stopping.set()
        app.state.job_events.begin_shutdown()

    try:
        _shutdown_aware_server(config, on_exit_signal).run()
    finally:
        supervisor.stop()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    _apply_env(args)
    from server.config import Settings
    from server.logs import setup_logging
    from server.worker.runner import Worker

    settings = Settings()
    setup_logging(settings.log_level, settings.log_format)
    worker = Worker(settings, device=args.device, parent_pid=args.parent_pid)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.load_pipelines()
    ready = sorted(e for e, loaded in worker.loaded.items() if not loaded.failed)
    log.info("worker %s ready: %s", worker.worker_id, ", ".join(ready) or "no pipeline")
    worker.serve_forever()
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Bring the job store's schema up to date (PostgreSQL: versioned migrations; SQLite: created at open)."""
    _apply_env(args)
    from server.config import Settings

    url = Settings().resolved_store_url
    if url.startswith(("postgresql://", "postgres://")):
        from server.store.migrations import current_version, upgrade

        applied = upgrade(url)
        print(f"schema version {current_version(url)}; applied now: {applied or 'none'}")
    else:
        from server.store import open_store

        open_store(url).close()
        print(f"{url}: SQLite schema is created and kept current when the store opens")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fal-onprem", description="Self-hosted, fal.ai-compatible inference server for human-image pipelines."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API and one worker per visible GPU (CPU worker when none)")
    _common_flags(serve)
    serve.add_argument("--host", help="bind address (env FAL_ONPREM_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (env FAL_ONPREM_PORT, default 8000)")
    serve.add_argument("--public-url", help="base URL for absolute URLs in responses")
    serve.add_argument("--api-keys", help="comma-separated API keys (env FAL_ONPREM_API_KEYS)")
    serve.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback bind without keys")
    serve.add_argument("--device", action="append", help="worker device(s), e.g. cuda:0 (default: all GPUs)")
    serve.add_argument("--no-worker", action="store_true", help="API only; attach workers with `worker`")
    serve.add_argument("--pull", action="store_true", help="download missing weights before serving")
    serve.add_argument("--ssl-certfile", help="TLS certificate (PEM) for HTTPS")
    serve.add_argument("--ssl-keyfile", help="TLS private key (PEM) for HTTPS")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="attach a worker to an existing job store")
    _common_flags(worker)
    worker.add_argument("--device", default="cpu", help="cpu or cuda:N")
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # set by `serve`: stop when it is gone
    worker.set_defaults(func=cmd_worker)

    db = sub.add_parser("db", help="job store maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply the store's schema migrations (safe to run concurrently)")
    _common_flags(upgrade)
    upgrade.set_defaults(func=cmd_db_upgrade)

    try:
        from weights.cli import add_subcommands
    except ImportError:
        add_subcommands = None
    if add_subcommands is not None:
        add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
