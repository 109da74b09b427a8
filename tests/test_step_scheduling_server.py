"""Stepwise pipelines through a real ``serve``: two workers share a burst, no job runs twice."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx

from tests.support.live_server import ECHO_MODULE, LiveServer
from tests.support.server_fixtures import wait_completed

MODULES = f"{ECHO_MODULE},tests.support.steps_pipeline"


def test_two_workers_share_a_burst_of_stepwise_jobs(tmp_path: Path) -> None:
    server = LiveServer(
        tmp_path,
        extra_args=["--device", "cpu", "--device", "cpu"],
        env={"FAL_ONPREM_PIPELINE_MODULES": MODULES},
        wait_for=("test/steps",),
    )
    server.start()
    try:
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # both workers, not just the first one, serve test/steps
                workers = client.get(f"{server.url}/readyz").json()["pipelines"]["test/steps"]["workers"]
                if sum(w["state"] == "ready" for w in workers) == 2:
                    break
                time.sleep(0.2)
            subs = [
                client.post(
                    f"{server.url}/queue/test/steps",
                    json={"seed": i, "num_inference_steps": 2 + i % 5, "step_ms": 50, "sync_mode": True},
                ).json()
                for i in range(24)
            ]
        for sub in subs:
            status = wait_completed(sub["status_url"], timeout=120)
            assert "error" not in status, status
        db = sqlite3.connect(tmp_path / "jobs.sqlite")
        rows = db.execute(
            "SELECT worker_id, attempts, json_extract(input, '$.num_inference_steps'), "
            "(SELECT COUNT(*) FROM logs WHERE logs.job_id = jobs.id AND logs.message LIKE 'Step %') "
            "FROM jobs WHERE endpoint = 'test/steps'"
        ).fetchall()
        assert len(rows) == 24
        assert all(attempts == 1 for _, attempts, _, _ in rows)
        assert all(logged == steps for _, _, steps, logged in rows)  # every step of every job ran once
        assert len({worker for worker, *_ in rows}) == 2, rows
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert 'fal_onprem_rows_per_step_count{endpoint="test/steps"}' in text
        assert 'fal_onprem_admission_wait_seconds_count{endpoint="test/steps"} 24.0' in text
    finally:
        server.stop()
