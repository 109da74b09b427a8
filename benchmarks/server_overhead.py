"""Server overhead: submit -> result latency and status requests/s with a no-op pipeline.

Starts ``fal-onprem serve --tiny`` on loopback with the test-only echo pipeline (64x64 image, one
zero-length step), so the numbers are the queue's own cost: HTTP, the SQLite store, claiming,
input decoding, output encoding and storage. Bounded in count and time.

    python -m benchmarks.server_overhead [--requests 200] [--status-seconds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from benchmarks.machine import machine_info, write_result
from tests.support.live_server import LiveServer
from tests.support.server_fixtures import png_data_uri

APP = "test/echo"


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


def run_latency(client: httpx.Client, base: str, n: int) -> list[float]:
    image = png_data_uri(size=(64, 64))
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        client.post(f"{base}/run/{APP}", json={"image_url": image, "seed": i}).raise_for_status()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def status_rate(base: str, status_url: str, seconds: float, threads: int) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--poll-ms", type=float, default=10.0, help="status poll interval for queue latency")
    parser.add_argument("--status-seconds", type=float, default=5.0)
    parser.add_argument("--status-threads", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # max_wait_ms=0: a lone request starts at once (batching waits are not overhead).
        server = LiveServer(Path(tmp), env={"FAL_ONPREM_PIPELINES": '{"test/echo": {"max_wait_ms": 0}}'})
        server.start()
        try:
            with httpx.Client(timeout=30) as client:
                queue_latency(client, server.url, 10, args.poll_ms / 1000)  # warm-up
                queue_ms = queue_latency(client, server.url, args.requests, args.poll_ms / 1000)
                run_ms = run_latency(client, server.url, args.requests)
                sub = client.post(f"{server.url}/queue/{APP}", json={"image_url": png_data_uri()}).json()
            rate = status_rate(server.url, sub["status_url"], args.status_seconds, args.status_threads)
        finally:
            server.stop()

    payload = {
        "benchmark": "server_overhead",
        "pipeline": "test/echo (no-op, 64x64 PNG in and out)",
        "machine": machine_info("cpu", ("fastapi", "uvicorn", "httpx")),
        "queue_submit_to_result": {**summary(queue_ms), "status_poll_ms": args.poll_ms},
        "sync_run": summary(run_ms),
        "status_requests_per_s": {"rate": round(rate, 1), "threads": args.status_threads},
    }
    path = write_result("server_overhead", "cpu", payload, args.out)
    print(f"{'measure':<28}{'p50 ms':>10}{'p99 ms':>10}")
    for name in ("queue_submit_to_result", "sync_run"):
        print(f"{name:<28}{payload[name]['p50_ms']:>10}{payload[name]['p99_ms']:>10}")
    print(f"status requests/s: {rate:.0f} ({args.status_threads} threads)  -> {path}")


if __name__ == "__main__":
    main()
