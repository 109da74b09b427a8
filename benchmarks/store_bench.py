"""Job store throughput and latency: SQLite vs PostgreSQL with 1, 4 and 8 workers.

    python -m benchmarks.store_bench [--jobs 2000] [--workers 1 4 8] [--out FILE]

Two measures per store and worker count:
- ``claims_per_s``: worker processes drain pre-queued jobs through the store alone (claim one, start,
  complete: the no-op limit of a worker loop, with no pipeline and no HTTP);
- ``submit_to_start_ms``: an API (``serve --no-worker``) and that many ``fal-onprem worker`` processes
  serving the no-op echo pipeline; jobs are submitted over HTTP at a steady rate and the delay from
  submit to start is read from the store (``started_at - created_at``).
PostgreSQL is a throw-away server started by the benchmark (the system's binaries).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.machine import machine_info, write_result
from pipelines import registry
from server.store import Job, open_store
from tests.support.live_server import ECHO_MODULE, REPO, LiveServer
from tests.support.postgres import PostgresServer
from tests.support.server_fixtures import png_data_uri

APP = "test/echo"


def _drain(url: str, worker: str, start: Any, out: Any) -> None:
    store = open_store(url)
    start.wait()
    done = 0
    while batch := store.claim_batch("bench/a", worker, lambda inp: 0, 1, 30):
        ids = store.start([j.id for j in batch], worker)
        for job_id in ids:
            store.complete(job_id, result={}, worker_id=worker)
        done += len(ids)
    out.put(done)


def claims_per_s(url: str, jobs: int, workers: int) -> dict[str, Any]:
    store = open_store(url)
    for i in range(jobs):
        store.create(Job(id=f"{workers}-{i}", endpoint="bench/a", input={}, created_at=1000.0 + i))
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_drain, args=(url, f"w{i}", start, out)) for i in range(workers)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every process open its connection before the clock starts
    t0 = time.perf_counter()
    start.set()
    counts = [out.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join(timeout=30)
    assert sum(counts) == jobs, counts
    store.close()
    return {"workers": workers, "jobs": jobs, "claims_per_s": round(jobs / elapsed, 1), "per_worker": counts}


def only_echo() -> str:
    return json.dumps({e: {"enabled": False} for e in registry.endpoints() if e != APP} | {APP: {"max_wait_ms": 0}})


def submit_to_start(url: str, root: Path, workers: int, jobs: int, rate: float) -> dict[str, Any]:
    env = {"FAL_ONPREM_PIPELINES": only_echo()}
    api = LiveServer(root, extra_args=["--no-worker", "--store-url", url], wait_for=(), env=env)
    api.start()
    procs = []
    try:
        worker_env = {**os.environ, **env, "PYTHONPATH": str(REPO), "FAL_ONPREM_PIPELINE_MODULES": ECHO_MODULE}
        for i in range(workers):
            cmd = [sys.executable, "-m", "server.cli", "worker", "--device", "cpu", "--tiny", "--store-url", url,
                   "--data-dir", str(root)]  # fmt: skip
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=worker_env, stdout=(root / f"w{i}.log").open("ab"),
                                          stderr=subprocess.STDOUT))  # fmt: skip
        api.wait_for = (APP,)
        api.wait_ready(120)
        image = png_data_uri(size=(8, 8))
        ids = []
        with httpx.Client(timeout=30) as client:
            for _ in range(jobs):
                t0 = time.perf_counter()
                ids.append(client.post(f"{api.url}/queue/{APP}", json={"image_url": image}).json()["request_id"])
                time.sleep(max(0.0, 1 / rate - (time.perf_counter() - t0)))
        store = open_store(url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = [store.get(i) for i in ids]
            if all(j is not None and j.status == "COMPLETED" for j in rows):
                break
            time.sleep(0.5)
        delays = sorted((j.started_at - j.created_at) * 1000 for j in rows if j and j.started_at)
        store.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        api.stop()
    return {
        "workers": workers,
        "jobs": jobs,
        "rate_per_s": rate,
        "started": len(delays),
        "p50_ms": round(statistics.median(delays), 2),
        "p99_ms": round(delays[min(len(delays) - 1, int(0.99 * len(delays)))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="submits per second for the latency run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    results: dict[str, Any] = {"sqlite": {}, "postgresql": {}}
    with tempfile.TemporaryDirectory() as tmp:
        pg = PostgresServer(Path(tempfile.mkdtemp(prefix="fal-onprem-pg-")))
        pg.start()
        try:
            for name in ("sqlite", "postgresql"):
                claims, latency = [], []
                for n in args.workers:
                    root = Path(tmp) / f"{name}-{n}"
                    root.mkdir()
                    url = f"sqlite:///{root / 'jobs.sqlite'}" if name == "sqlite" else pg.create_database()
                    claims.append(claims_per_s(url, args.jobs, n))
                    url = f"sqlite:///{root / 'serve.sqlite'}" if name == "sqlite" else pg.create_database()
                    latency.append(submit_to_start(url, root, n, args.latency_jobs, args.rate))
                    print(name, claims[-1], latency[-1], flush=True)
                results[name] = {"claims": claims, "submit_to_start": latency}
        finally:
            pg.stop("immediate")
    payload = {
        "benchmark": "store_bench",
        "machine": machine_info("cpu", ("psycopg", "fastapi")),
        "note": "2-core machine shared with other work: worker processes compete with the database for the cores",
        **results,
    }
    print(f"-> {write_result('store_bench', 'cpu', payload, args.out)}")


if __name__ == "__main__":
    main()
