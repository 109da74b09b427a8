"""/metrics scrape time on an empty store and on one pre-filled with many finished jobs (issue #11).

Metrics come from counters kept as jobs complete, so the two should cost the same. Jobs are written in
bulk (queued, then completed by one UPDATE, as the store's triggers count them), not through the API.

    python -m benchmarks.metrics_scrape [--jobs 200000] [--scrapes 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from server.metrics import render_metrics
from server.store import SQLiteJobStore


def fill(store: SQLiteJobStore, jobs: int) -> float:
    started = time.monotonic()
    db = store._db()
    now = time.time()
    metrics = json.dumps({"queue_time": 0.05, "inference_time": 0.4, "batch_size": 8})
    for first in range(0, jobs, 10_000):
        rows = [
            (f"job-{i}", "fal-ai/dwpose", "{}", "IN_QUEUE", "normal", 0, now - 60, metrics)
            for i in range(first, min(jobs, first + 10_000))
        ]
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO jobs (id, endpoint, input, status, priority, priority_rank, created_at, metrics) "
            "VALUES (?,?,?,?,?,?,?,?)",
            rows,
        )
        db.execute("UPDATE jobs SET status = 'COMPLETED', finished_at = ? WHERE status = 'IN_QUEUE'", (now,))
        db.execute("COMMIT")
    return time.monotonic() - started


def scrape_ms(store: SQLiteJobStore, scrapes: int) -> dict[str, float]:
    times = []
    for _ in range(scrapes):
        started = time.perf_counter()
        render_metrics(store)
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from benchmarks.machine import machine_info, write_result

    with tempfile.TemporaryDirectory() as tmp:
        empty = SQLiteJobStore(Path(tmp) / "empty.sqlite")
        full = SQLiteJobStore(Path(tmp) / "full.sqlite")
        fill_s = fill(full, args.jobs)
        payload = {
            "benchmark": "metrics_scrape",
            "what": "render_metrics() on the SQLite store: empty vs pre-filled with finished jobs",
            "machine": machine_info("cpu", ("prometheus-client",)),
            "jobs": args.jobs,
            "fill_seconds": round(fill_s, 1),
            "empty_store": scrape_ms(empty, args.scrapes),
            "filled_store": scrape_ms(full, args.scrapes),
        }
    print(json.dumps(payload, indent=1))
    print(write_result("metrics_scrape", "cpu", payload, args.out))


if __name__ == "__main__":
    main()
