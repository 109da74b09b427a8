"""Server overhead: the queue's own cost per request with a no-op pipeline, optionally side by side with Cog.

Starts ``fal-onprem serve --tiny`` on loopback with the test-only echo pipeline (64x64 image, one
zero-length step), so the numbers are the server's own cost: HTTP, the SQLite store, wake-ups,
claiming, input decoding, output encoding and storage. Bounded in count and time.

``--vs-cog`` also starts Replicate Cog's HTTP server (``python -m cog.server.http``, no Docker) with a
predictor doing the same work (benchmarks/cog_echo_predictor.py: decode a PNG data URI, tint, return a
PNG data URI; our side sends ``sync_mode`` so that both answer a data URI). Cog is installed into its
own virtualenv (``--cog-venv``, created on first use). Both servers run at once and the measurements
alternate between them round by round, so machine load hits both alike; ratios are ours / Cog's.

    python -m benchmarks.server_overhead [--requests 200] [--vs-cog]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from benchmarks.machine import machine_info, write_result
from tests.support.live_server import LiveServer, free_port
from tests.support.server_fixtures import png_data_uri

APP = "test/echo"
COG_VERSION = "0.23.1"
COG_PREDICTOR = Path(__file__).with_name("cog_echo_predictor.py")
CONCURRENCY = 16


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process and its live descendants (from /proc)."""
    total, stack = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # exited meanwhile
    return total


# -- the two servers


class Target:
    """One server under test: how to send a sync request and a webhook request to it."""

    name: str
    url: str
    pid: int

    def run(self, client: httpx.Client, image: str, seed: int) -> None: ...
    def submit_webhook(self, client: httpx.Client, image: str, seed: int, hook: str) -> str: ...
    def completed_at(self, request_id: str, body: dict[str, Any]) -> float: ...


class FalOnprem(Target):
    name = "fal_onprem"

    def __init__(self, server: LiveServer) -> None:
        self.server, self.url = server, server.url
        assert server.proc is not None
        self.pid = server.proc.pid
        self._db = sqlite3.connect(server.data_dir / "jobs.sqlite", check_same_thread=False)

    def run(self, client: httpx.Client, image: str, seed: int) -> None:
        r = client.post(f"{self.url}/run/{APP}", json={"image_url": image, "seed": seed, "sync_mode": True})
        r.raise_for_status()

    def submit_webhook(self, client: httpx.Client, image: str, seed: int, hook: str) -> str:
        body = {"image_url": image, "seed": seed, "sync_mode": True}
        r = client.post(f"{self.url}/queue/{APP}", params={"fal_webhook": hook}, json=body)
        r.raise_for_status()
        return r.json()["request_id"]

    def completed_at(self, request_id: str, body: dict[str, Any]) -> float:
        (finished,) = self._db.execute("SELECT finished_at FROM jobs WHERE id = ?", (request_id,)).fetchone()
        return float(finished)


class Cog(Target):
    name = "cog"

    def __init__(self, url: str, pid: int, log_path: Path) -> None:
        self.url, self.pid, self.log_path = url, pid, log_path
        self.busy_answers = 0  # 409: all slots busy (a slot is freed a moment after its answer): sent again
        self._lock = threading.Lock()

    def run(self, client: httpx.Client, image: str, seed: int) -> None:
        while True:
            r = client.post(f"{self.url}/predictions", json={"input": {"image_url": image, "seed": seed}})
            if r.status_code != 409:
                break
            with self._lock:
                self.busy_answers += 1
        r.raise_for_status()
        assert r.json()["status"] == "succeeded", r.text[:300]

    def submit_webhook(self, client: httpx.Client, image: str, seed: int, hook: str) -> str:
        body = {"input": {"image_url": image, "seed": seed}, "webhook": hook, "webhook_events_filter": ["completed"]}
        r = client.post(f"{self.url}/predictions", json=body, headers={"Prefer": "respond-async"})
        r.raise_for_status()
        return r.json()["id"]

    def completed_at(self, request_id: str, body: dict[str, Any]) -> float:
        """When Cog's log says the prediction completed (its webhook body carries no timestamps)."""
        for line in reversed(self.log_path.read_text(errors="replace").splitlines()):
            if request_id in line and "Prediction worker completed" in line:
                stamp = json.loads(line)["timestamp"]  # RFC 3339 with nanoseconds
                return datetime.fromisoformat(stamp[:26] + "+00:00").timestamp()
        raise LookupError(f"no completion logged for {request_id}")


def cog_python(venv: Path) -> Path:
    """The Cog virtualenv's python, created (with Cog, Pillow, NumPy) on first use."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", f"import cog, PIL, numpy; assert cog.__version__ == {COG_VERSION!r}"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", f"cog=={COG_VERSION}", "pillow", "numpy"]
    subprocess.run(pip, check=True, timeout=900)
    return python


@contextmanager
def cog_server(venv: Path, log_path: Path) -> Iterator[Cog]:
    python = cog_python(venv)
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",  # its worker runs `python`
        "PORT": str(port),
        "COG_MAX_CONCURRENCY": str(CONCURRENCY),
        "COG_PREDICT_TYPE_STUB": f"{COG_PREDICTOR.name}:Predictor",
    }
    env.pop("PYTHONPATH", None)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(python), "-m", "cog.server.http", "--host", "127.0.0.1"],
            cwd=COG_PREDICTOR.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Cog did not start:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health-check", timeout=2).json().get("status") == "READY":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        yield Cog(url, proc.pid, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- measurements


def sync_rounds(target: Target, client: httpx.Client, n: int, start_seed: int) -> tuple[list[float], float]:
    """``n`` sequential sync requests: latencies (ms) and the server's CPU seconds meanwhile."""
    image = png_data_uri(size=(64, 64))
    cpu0 = tree_cpu_s(target.pid)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        target.run(client, image, start_seed + i)
        out.append((time.perf_counter() - t0) * 1000)
    return out, tree_cpu_s(target.pid) - cpu0


def throughput(target: Target, seconds: float, clients: int) -> tuple[int, float]:
    """Sync requests completed by ``clients`` concurrent clients in ``seconds``; and the elapsed time."""
    image = png_data_uri(size=(64, 64))
    sessions = [httpx.Client(timeout=60) for _ in range(clients)]  # made up front: each loads TLS settings
    deadline = time.monotonic() + seconds

    def client_loop(k: int) -> int:
        count = 0
        while time.monotonic() < deadline:
            target.run(sessions[k], image, k * 100_000 + count)
            count += 1
        return count

    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(clients) as pool:
            done = sum(pool.map(client_loop, range(clients)))
    finally:
        for c in sessions:
            c.close()
    return done, time.monotonic() - t0


class HookReceiver:
    """A loopback webhook endpoint recording when each request's webhook arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, tuple[float, dict[str, Any]]] = {}
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.time()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                key = body.get("request_id") or body.get("id")
                with receiver.cond:
                    receiver.arrived[key] = (now, body)
                    receiver.cond.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait(self, key: str, timeout: float = 30.0) -> tuple[float, dict[str, Any]]:
        with self.cond:
            if not self.cond.wait_for(lambda: key in self.arrived, timeout):
                raise TimeoutError(f"no webhook for {key} within {timeout}s")
            return self.arrived[key]


def webhook_rounds(
    target: Target, client: httpx.Client, hooks: HookReceiver, n: int
) -> tuple[list[float], list[float]]:
    """Sequential webhook requests: submit -> webhook received, and completion -> webhook received (ms)."""
    image = png_data_uri(size=(64, 64))
    total, after = [], []
    for i in range(n):
        t_submit = time.time()
        key = target.submit_webhook(client, image, i, hooks.url)
        arrived, body = hooks.wait(key)
        total.append((arrived - t_submit) * 1000)
        after.append((arrived - target.completed_at(key, body)) * 1000)
    return total, after


def queue_latency(client: httpx.Client, base: str, n: int, poll_s: float) -> list[float]:
    """Sequential submit -> poll status -> result, as fal clients do (Python polls every 0.1 s)."""
    image = png_data_uri(size=(64, 64))
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        sub = client.post(f"{base}/queue/{APP}", json={"image_url": image, "seed": i}).json()
        while client.get(sub["status_url"]).json()["status"] != "COMPLETED":
            time.sleep(poll_s)
        client.get(sub["response_url"]).raise_for_status()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def status_rate(status_url: str, seconds: float, threads: int) -> float:
    deadline = time.monotonic() + seconds

    def hammer(_: int) -> int:
        count = 0
        with httpx.Client(timeout=10) as c:
            while time.monotonic() < deadline:
                c.get(status_url).raise_for_status()
                count += 1
        return count

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(hammer, range(threads)))
    return total / (time.monotonic() - t0)


def side_by_side(targets: list[Target], args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement in ``args.rounds`` rounds, alternating the targets within each round."""
    latency: dict[str, list[float]] = {t.name: [] for t in targets}
    cpu: dict[str, float] = dict.fromkeys(latency, 0.0)
    done: dict[str, int] = dict.fromkeys(latency, 0)
    elapsed: dict[str, float] = dict.fromkeys(latency, 0.0)
    hook_total: dict[str, list[float]] = {t.name: [] for t in targets}
    hook_after: dict[str, list[float]] = {t.name: [] for t in targets}
    hooks = HookReceiver()
    per_round = max(1, args.requests // args.rounds)
    hooks_per_round = max(1, args.webhooks // args.rounds)
    with httpx.Client(timeout=60) as client:
        for t in targets:  # warm-up: connections, lazy imports, first-use caches
            sync_rounds(t, client, 10, 10**6)
        for r in range(args.rounds):
            order = targets if r % 2 == 0 else targets[::-1]
            for t in order:
                ms, cpu_s = sync_rounds(t, client, per_round, r * per_round)
                latency[t.name] += ms
                cpu[t.name] += cpu_s
            for t in order:
                n, secs = throughput(t, args.throughput_seconds, CONCURRENCY)
                done[t.name] += n
                elapsed[t.name] += secs
            for t in order:
                total, after = webhook_rounds(t, client, hooks, hooks_per_round)
                hook_total[t.name] += total
                hook_after[t.name] += after
    hooks.httpd.shutdown()
    out: dict[str, Any] = {}
    for t in targets:
        out[t.name] = {
            "sync_run": summary(latency[t.name]),
            "server_cpu_ms_per_sync_request": round(1000 * cpu[t.name] / len(latency[t.name]), 2),
            f"throughput_{CONCURRENCY}_clients_req_per_s": round(done[t.name] / elapsed[t.name], 1),
            "webhook_submit_to_received": summary(hook_total[t.name]),
            "webhook_after_completion": summary(hook_after[t.name]),
        }
    return out


def ratios(ours: dict[str, Any], cog: dict[str, Any]) -> dict[str, float]:
    def r(a: float, b: float) -> float:
        return round(a / b, 2) if b else float("inf")

    tput = f"throughput_{CONCURRENCY}_clients_req_per_s"
    return {
        "sync_run_p50": r(ours["sync_run"]["p50_ms"], cog["sync_run"]["p50_ms"]),
        "sync_run_p99": r(ours["sync_run"]["p99_ms"], cog["sync_run"]["p99_ms"]),
        "server_cpu_per_sync_request": r(ours["server_cpu_ms_per_sync_request"], cog["server_cpu_ms_per_sync_request"]),
        f"throughput_{CONCURRENCY}_clients": r(ours[tput], cog[tput]),
        "webhook_after_completion_p50": r(
            ours["webhook_after_completion"]["p50_ms"], cog["webhook_after_completion"]["p50_ms"]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per measurement")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="status poll interval for queue latency")
    parser.add_argument("--status-seconds", type=float, default=5.0)
    parser.add_argument("--status-threads", type=int, default=8)
    parser.add_argument("--vs-cog", action="store_true", help="also measure Replicate Cog side by side")
    parser.add_argument("--cog-venv", type=Path, default=Path(tempfile.gettempdir()) / f"fal-onprem-cog-{COG_VERSION}")
    parser.add_argument("--rounds", type=int, default=4, help="side by side: alternating rounds")
    parser.add_argument("--throughput-seconds", type=float, default=3.0, help="side by side: per round and server")
    parser.add_argument("--webhooks", type=int, default=60, help="side by side: webhook requests per server")
    parser.add_argument("--note", default="", help="free text recorded with the result (e.g. machine load)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # max_wait_ms=0: a lone request starts at once (batching waits are not overhead). Loopback
        # webhooks need the allow list.
        env = {"FAL_ONPREM_PIPELINES": '{"test/echo": {"max_wait_ms": 0}}', "FAL_ONPREM_URL_ALLOW_LIST": "127.0.0.1"}
        server = LiveServer(Path(tmp), env=env)
        server.start()
        try:
            with httpx.Client(timeout=30) as client:
                queue_latency(client, server.url, 10, args.poll_ms / 1000)  # warm-up
                queue_ms = queue_latency(client, server.url, args.requests, args.poll_ms / 1000)
                sub = client.post(f"{server.url}/queue/{APP}", json={"image_url": png_data_uri()}).json()
            rate = status_rate(sub["status_url"], args.status_seconds, args.status_threads)
            ours, busy = FalOnprem(server), 0
            if args.vs_cog:
                with cog_server(args.cog_venv, Path(tmp) / "cog.log") as cog:
                    compared = side_by_side([ours, cog], args)
                    busy = cog.busy_answers
            else:
                compared = side_by_side([ours], args)
        finally:
            server.stop()

    payload: dict[str, Any] = {
        "benchmark": "server_overhead",
        "pipeline": "test/echo (no-op, 64x64 PNG in and out)",
        "machine": machine_info("cpu", ("fastapi", "uvicorn", "httpx")),
        "note": args.note,
        "queue_submit_to_result": {**summary(queue_ms), "status_poll_ms": args.poll_ms},
        "status_requests_per_s": {"rate": round(rate, 1), "threads": args.status_threads},
        "side_by_side": {
            "method": f"both servers up at once; {args.rounds} rounds alternating the servers; sync requests "
            f"sequential from one client (ours with sync_mode, so both answer a data URI); throughput with "
            f"{CONCURRENCY} concurrent clients (Cog with COG_MAX_CONCURRENCY={CONCURRENCY}); webhooks sequential; "
            "server CPU = user+system time of the server's process tree during its sync requests",
            **compared,
        },
    }
    if args.vs_cog:
        payload["side_by_side"]["cog_version"] = COG_VERSION
        payload["side_by_side"]["cog_409_busy_answers_resent"] = busy
        payload["side_by_side"]["ratio_ours_over_cog"] = ratios(compared["fal_onprem"], compared["cog"])
    path = write_result("server_overhead", "cpu", payload, args.out)
    print(json.dumps({k: payload[k] for k in ("queue_submit_to_result", "side_by_side")}, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
