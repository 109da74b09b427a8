"""A worker killed mid-batch: its jobs are re-queued once, then failed with a clear error."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.store import Job, SQLiteJobStore
from tests.support.live_server import LiveServer
from tests.support.server_fixtures import png_data_uri, wait_completed, wait_status


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("crash"), env={"FAL_ONPREM_JOB_LEASE_S": "3"})
    s.start()
    yield s
    s.stop()


def echo_worker_pid(server: LiveServer) -> int:
    workers = httpx.get(f"{server.url}/readyz").json()["pipelines"]["test/echo"]["workers"]
    ready = [w for w in workers if w["state"] == "ready"]
    return int(ready[-1]["worker"].split(":")[1])


def test_sigkill_mid_job_reruns_the_job(server: LiveServer) -> None:
    sub = httpx.post(
        f"{server.url}/queue/test/echo", json={"image_url": png_data_uri(), "seed": 4, "steps": 20, "step_ms": 100}
    ).json()
    wait_status(sub["status_url"], "IN_PROGRESS")
    os.kill(echo_worker_pid(server), signal.SIGKILL)
    status = wait_completed(sub["status_url"], timeout=120)  # lease 3 s + restart + reload + rerun
    assert "error" not in status, status
    result = httpx.get(sub["response_url"]).json()
    assert result["seed"] == 4
    messages = [entry["message"] for entry in status["logs"]]
    assert messages.count("Step 20/20") == 1  # the first attempt died before finishing


def test_job_that_kills_its_worker_twice_fails_clearly(server: LiveServer) -> None:
    sub = httpx.post(f"{server.url}/queue/test/echo", json={"image_url": png_data_uri(), "fail": "exit"}).json()
    status = wait_completed(sub["status_url"], timeout=180)
    assert status["error_type"] == "runner_disconnected"
    r = httpx.get(sub["response_url"])
    assert r.status_code == 500  # not retryable: a client retry would re-run the input that killed the worker
    assert "stopped responding 2 times" in r.json()["detail"]
    # the server keeps serving afterwards
    ok = httpx.post(f"{server.url}/queue/test/echo", json={"image_url": png_data_uri(), "seed": 1}).json()
    assert "error" not in wait_completed(ok["status_url"], timeout=120)


def test_api_alone_recovers_a_dead_workers_job(tmp_path: Path) -> None:
    """No worker alive at all: the API process still re-queues, then fails, an orphaned job."""
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    store.create(Job(id="orphan", endpoint="test/echo", input={"image_url": "x"}))
    store.claim_batch("test/echo", "dead-worker", lambda inp: (), 1, lease_s=-1)  # claimed, lease expired
    api = LiveServer(tmp_path, extra_args=["--no-worker"], wait_for=())
    api.start()
    try:
        url = f"{api.url}/queue/test/echo/requests/orphan/status"
        deadline = time.monotonic() + 30
        while httpx.get(url).json()["status"] == "IN_PROGRESS" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert httpx.get(url).json()["status"] == "IN_QUEUE"  # re-queued once, waiting for a worker
    finally:
        api.stop()
