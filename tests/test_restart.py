"""Jobs queued before a server restart complete after it (the SQLite store is durable)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.live_server import LiveServer
from tests.support.server_fixtures import png_data_uri, wait_completed


def test_jobs_queued_before_restart_complete_after_it(tmp_path: Path) -> None:
    api_only = LiveServer(tmp_path, extra_args=["--no-worker"], wait_for=())
    api_only.start()
    try:
        # With no worker, the endpoint has no readiness report yet; submissions are queued.
        subs = [
            httpx.post(f"{api_only.url}/queue/test/echo", json={"image_url": png_data_uri(), "seed": i}).json()
            for i in range(3)
        ]
        status = httpx.get(subs[-1]["status_url"]).json()
        assert status["status"] == "IN_QUEUE" and status["queue_position"] == 2
    finally:
        api_only.stop()

    server = LiveServer(tmp_path)  # same data dir, new port, with a worker
    server.start()
    try:
        for i, sub in enumerate(subs):
            url = f"{server.url}/queue/test/echo/requests/{sub['request_id']}"
            assert wait_completed(f"{url}/status")["status"] == "COMPLETED"
            assert httpx.get(url).json()["seed"] == i
    finally:
        server.stop()
