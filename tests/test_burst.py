"""A burst of 500 submits: 500 results, none lost, none run twice."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.support.live_server import LiveServer
from tests.support.server_fixtures import png_data_uri

N = 500


def test_burst_of_500_submits(live_server: LiveServer) -> None:
    image = png_data_uri(size=(16, 16))
    with httpx.Client(timeout=30) as client:

        def submit(i: int) -> str:
            r = client.post(f"{live_server.url}/queue/test/echo", json={"image_url": image, "seed": i})
            assert r.status_code == 200, r.text
            return r.json()["request_id"]

        with ThreadPoolExecutor(max_workers=16) as pool:
            ids = list(pool.map(submit, range(N)))
        assert len(set(ids)) == N

        db = sqlite3.connect(live_server.data_dir / "jobs.sqlite")
        marks = ",".join("?" * N)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            (done,) = db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE status='COMPLETED' AND id IN ({marks})", ids
            ).fetchone()
            if done == N:
                break
            time.sleep(0.5)
        assert done == N, f"only {done}/{N} completed"

        rows = db.execute(
            f"SELECT id, attempts, error, (SELECT COUNT(*) FROM logs WHERE logs.job_id = jobs.id "
            f"AND message LIKE 'tinted item %') FROM jobs WHERE id IN ({marks})",
            ids,
        ).fetchall()
        assert all(error is None for _, _, error, _ in rows)
        assert all(attempts == 1 for _, attempts, _, _ in rows)
        assert all(ran == 1 for _, _, _, ran in rows)  # each job's output was produced exactly once
        for i in (0, N // 2, N - 1):
            assert client.get(f"{live_server.url}/queue/test/echo/requests/{ids[i]}").json()["seed"] == i
