"""Chaos checks on a real ``serve`` (issue #11): kill -9 mid-batch, restart with queued jobs, a 300-job
burst, shutdown with waiting runs. Every job completes, none runs twice. Waits are bounded and generous;
measured figures are printed (README "Reliability")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from server.store import SQLiteJobStore
from tests.support.live_server import REPO, LiveServer, free_port
from tests.support.server_fixtures import png_data_uri

ONLY_ECHO = json.dumps(
    {e: {"enabled": False} for e in ("fal-ai/dwpose", "fal-ai/live-portrait/image", "fal-ai/cat-vton",
                                     "fal-ai/leffa/pose-transfer", "fal-ai/pulid")}
)  # fmt: skip
LONG_LEASE = "120"  # longer than any wait below: a recovery we see was not a lease running out


def _env(**extra: str) -> dict[str, str]:
    return {"FAL_ONPREM_PIPELINES": ONLY_ECHO, "FAL_ONPREM_JOB_LEASE_S": LONG_LEASE, **extra}


def _submit(server: LiveServer, body: dict) -> dict:
    r = httpx.post(f"{server.url}/queue/test/echo", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _wait(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; returns the seconds it took (fails after ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout} s")


def test_shutdown_answers_waiting_runs_with_json_503_and_restarts_no_worker(tmp_path: Path) -> None:
    """SIGTERM to the whole process group (as systemd or docker stop do) while a /run waits."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAL_ONPREM_PIPELINE_MODULES": "tests.support.echo_pipeline",
           **_env()}  # fmt: skip
    cmd = [sys.executable, "-m", "server.cli", "serve", "--tiny", "--port", str(port), "--data-dir", str(tmp_path)]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).json()["pipelines"]["test/echo"]["state"] == "ready"
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        _wait(ready, 180, "server ready")
        answer: dict = {}

        def run() -> None:  # a long job: it is still running or queued when the signal comes
            body = {"image_url": png_data_uri(), "steps": 200, "step_ms": 100}
            r = httpx.post(f"{url}/run/test/echo", json=body, timeout=60)
            answer.update(status=r.status_code, headers=dict(r.headers), text=r.text)

        waiter = threading.Thread(target=run)
        waiter.start()
        store = SQLiteJobStore(tmp_path / "jobs.sqlite")
        _wait(lambda: store._db().execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1, 30, "run submitted")
        os.killpg(proc.pid, signal.SIGTERM)
        waiter.join(timeout=60)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert answer["status"] == 503, answer
    assert json.loads(answer["text"])["error_type"] == "server_shutting_down"
    assert int(answer["headers"]["retry-after"]) > 0
    log_text = log_path.read_text(errors="replace")
    assert "restarting" not in log_text, log_text[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Two CPU workers serving only test/echo, with leases far longer than any wait here."""
    s = LiveServer(tmp_path_factory.mktemp("chaos"), env=_env(), extra_args=["--device", "cpu", "--device", "cpu"])
    s.start()
    yield s
    s.stop()


def _store(server: LiveServer) -> SQLiteJobStore:
    return SQLiteJobStore(server.data_dir / "jobs.sqlite")


def _runs(server: LiveServer, job_id: str, steps: int) -> int:
    """How many times the job's batch reached its last step (one per run that finished)."""
    return sum(1 for e in _store(server).logs(job_id) if e.message == f"Step {steps}/{steps}")


def _all_done_once(server: LiveServer, ids: list[str], steps: int, timeout: float) -> None:
    store = _store(server)
    _wait(lambda: all(store.get(j).status == "COMPLETED" for j in ids), timeout, f"{len(ids)} jobs completed")
    jobs = [store.get(j) for j in ids]
    assert [j.id for j in jobs if j.error] == [], [j.error for j in jobs if j.error][:3]
    assert {j: _runs(server, j, steps) for j in ids} == dict.fromkeys(ids, 1)  # each ran to the end once


def test_kill_9_mid_batch_reruns_at_once_and_nothing_runs_twice(server: LiveServer) -> None:
    steps = 40
    ids = [
        _submit(server, {"image_url": png_data_uri(), "steps": steps, "step_ms": 100})["request_id"] for _ in range(8)
    ]
    store = _store(server)

    def running() -> list:
        return [j for j in map(store.get, ids) if j.status == "IN_PROGRESS" and j.started_at is not None]

    _wait(lambda: bool(running()) and any(e.message == "Step 3/40" for e in store.logs(running()[0].id)), 60, "run")
    victim = running()[0].worker_id
    held = [j.id for j in running() if j.worker_id == victim]
    killed_at = time.time()
    os.kill(int(victim.split(":")[1]), signal.SIGKILL)

    def rerun_started() -> bool:
        jobs = [store.get(j) for j in held]
        return all(j.attempts == 2 and j.started_at is not None and j.started_at > killed_at for j in jobs)

    _wait(rerun_started, 60, "re-runs started")  # the lease is 120 s: only the supervisor's release explains it
    delays = [store.get(j).started_at - killed_at for j in held]
    print(f"\nkill -9 of a worker holding {len(held)} running jobs: re-runs started after {max(delays):.2f} s")
    assert max(delays) < 30  # measured ~1-2 s; generous for a loaded machine
    _all_done_once_after_kill(server, ids, held, steps)


def _all_done_once_after_kill(server: LiveServer, ids: list[str], held: list[str], steps: int) -> None:
    store = _store(server)
    _wait(lambda: all(store.get(j).status == "COMPLETED" for j in ids), 120, "all completed")
    assert [store.get(j).error for j in ids if store.get(j).error] == []
    # the killed attempt never reached its last step: every job finished exactly once
    assert {j: _runs(server, j, steps) for j in ids} == dict.fromkeys(ids, 1)
    assert {store.get(j).attempts for j in held} == {2}


def test_burst_of_300_jobs_all_complete_once(server: LiveServer) -> None:
    body = {"image_url": png_data_uri(), "steps": 1}
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        ids = [r["request_id"] for r in pool.map(lambda _: _submit(server, body), range(300))]
    assert len(set(ids)) == 300
    _all_done_once(server, ids, steps=1, timeout=240)
    print(f"\n300-job burst: all completed once in {time.monotonic() - started:.1f} s")
    assert {_store(server).get(j).attempts for j in ids} == {1}


def test_restart_with_queued_jobs_completes_them_all_once(server: LiveServer) -> None:
    steps = 5
    body = {"image_url": png_data_uri(), "steps": steps, "step_ms": 100}
    ids = [_submit(server, body)["request_id"] for _ in range(40)]
    server.restart()  # SIGTERM: running batches finish, the queue waits for the next start
    _all_done_once(server, ids, steps=steps, timeout=240)
