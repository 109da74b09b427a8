"""Jobs submitted together run as one batch, and batching never changes a job's result."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.live_server import ECHO_MODULE, REPO, LiveServer
from tests.support.server_fixtures import fetch_bytes, png_data_uri, wait_completed

APP = "test/echo"
N = 6


def submit(server: LiveServer, body: dict) -> dict:
    r = httpx.post(f"{server.url}/queue/{APP}", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def image_digest(result: dict) -> str:
    return hashlib.sha256(fetch_bytes(result["image"]["url"])).hexdigest()


def start_worker(server: LiveServer) -> subprocess.Popen[bytes]:
    """``fal-onprem worker`` attached to the server's job store (as a worker on another GPU would be)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAL_ONPREM_PIPELINE_MODULES": ECHO_MODULE}
    cmd = [sys.executable, "-m", "server.cli", "worker", "--tiny", "--device", "cpu",
           "--data-dir", str(server.data_dir)]  # fmt: skip
    log = (server.data_dir / "worker.log").open("ab")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_jobs_submitted_together_share_one_batch_and_match_single_runs(tmp_path: Path) -> None:
    # No worker while the N jobs are submitted: when one starts, all N are queued and it claims them at once.
    server = LiveServer(tmp_path, extra_args=["--no-worker"], wait_for=())
    server.start()
    worker = None
    try:
        inputs = [{"image_url": png_data_uri((20 * i, 40, 90)), "seed": 100 + i} for i in range(N)]
        subs = [submit(server, body) for body in inputs]
        worker = start_worker(server)
        batched = []
        for sub in subs:
            status = wait_completed(sub["status_url"], timeout=180)
            assert status["metrics"]["batch_size"] == N, status
            batched.append(httpx.get(sub["response_url"], timeout=10).json())

        for body, together in zip(inputs, batched, strict=True):
            alone_sub = submit(server, body)  # the worker is idle and nothing else is queued: a batch of one
            status = wait_completed(alone_sub["status_url"])
            assert status["metrics"]["batch_size"] == 1
            alone = httpx.get(alone_sub["response_url"], timeout=10).json()
            assert together["seed"] == alone["seed"] == body["seed"]
            assert together["batch_size"] == N and alone["batch_size"] == 1
            assert image_digest(together) == image_digest(alone)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        server.stop()


def test_metrics_endpoint_reports_queue_and_outcomes(tmp_path: Path) -> None:
    """On its own server, after a known workload: three jobs run one after another (batches of one)."""
    server = LiveServer(tmp_path)
    server.start()
    try:
        for i in range(3):
            wait_completed(submit(server, {"image_url": png_data_uri(), "seed": i})["status_url"])
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        server.stop()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fal_onprem_") and not line.startswith("#")
    }
    assert samples['fal_onprem_requests_completed_total{endpoint="test/echo",error_type=""}'] == 3
    assert "fal_onprem_pipeline_ready" in text
    assert samples['fal_onprem_batch_size_bucket{endpoint="test/echo",le="1.0"}'] == 3
    assert samples['fal_onprem_batch_size_count{endpoint="test/echo"}'] == 3
    assert samples['fal_onprem_run_seconds_count{endpoint="test/echo"}'] == 3
    assert "fal_onprem_queue_wait_seconds_sum" in text


def test_two_workers_share_a_burst(tmp_path: Path) -> None:
    """Two workers on one store (as with two GPUs): a burst is split between them, nothing runs twice."""
    # both workers serve before the burst starts (a slow second start must not leave it all to the first)
    server = LiveServer(tmp_path, extra_args=["--device", "cpu", "--device", "cpu"], ready_workers=2)
    server.start()
    try:
        subs = [
            submit(server, {"image_url": png_data_uri(), "seed": i, "steps": 5, "step_ms": 100}) for i in range(4 * 8)
        ]
        for sub in subs:
            assert "error" not in wait_completed(sub["status_url"], timeout=120)
        db = sqlite3.connect(tmp_path / "jobs.sqlite")
        rows = db.execute("SELECT worker_id, attempts FROM jobs").fetchall()
        assert all(attempts == 1 for _, attempts in rows)
        assert len({worker for worker, _ in rows}) == 2, rows
    finally:
        server.stop()
