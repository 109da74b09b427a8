"""Event-driven wake-ups: the store's notifications reach workers and waiting requests in other processes.

The live-server tests set every fallback poll to 10 minutes, so a job that starts, a ``/run`` that
answers, a webhook that arrives or a status stream that ends within the (much shorter) test timeouts
can only have been woken by a notification. Notifications only accelerate: with them off, polling
alone still finishes every job.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from server.store import Job, LogEntry, SQLiteJobStore, open_store
from server.store.notify import DONE, JOBS, LOG, MISSED, QUEUE, STARTED, WEBHOOK, LocalNotifier
from tests.support.live_server import REPO, LiveServer
from tests.support.server_fixtures import png_data_uri, wait_completed

APP = "test/echo"
NEVER_S = "600"  # fallback polls that never fire during a test
WAIT_S = 60.0


# -- the notifier


def test_publish_reaches_the_channel_subscribers_only(tmp_path: Path) -> None:
    notifier = LocalNotifier(tmp_path / "n")
    queue, jobs = notifier.subscribe(QUEUE), notifier.subscribe(JOBS)
    try:
        notifier.publish(QUEUE, "test/echo")
        notifier.publish(QUEUE, "other")
        assert queue.wait(WAIT_S) == ["test/echo", "other"]
        assert jobs.drain() == []
    finally:
        queue.close()
        jobs.close()
    assert list((notifier.directory / QUEUE).iterdir()) == []  # closing removes its socket


def test_publish_from_another_process_wakes_a_waiting_subscriber(tmp_path: Path) -> None:
    sub = LocalNotifier(tmp_path).subscribe(JOBS)
    code = f"from server.store.notify import *; LocalNotifier({str(tmp_path)!r}).publish(JOBS, 'abc done')"
    try:
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=WAIT_S)
        assert sub.wait(WAIT_S) == ["abc done"]
    finally:
        sub.close()


def test_a_dead_subscribers_socket_is_removed_and_publishing_goes_on(tmp_path: Path) -> None:
    notifier = LocalNotifier(tmp_path)
    dead, alive = notifier.subscribe(QUEUE), notifier.subscribe(QUEUE)
    dead._sock.close()  # as if its process had been killed: the file stays, nobody reads it
    try:
        notifier.publish(QUEUE, "x")
        assert alive.wait(WAIT_S) == ["x"]
        assert not dead.path.exists()
    finally:
        alive.close()


def test_a_full_socket_queue_is_reported_as_missed_notifications(tmp_path: Path) -> None:
    """Publishers drop datagrams when a subscriber's queue is full; the subscriber learns it may have lost some."""
    notifier = LocalNotifier(tmp_path)
    sub = notifier.subscribe(JOBS)
    try:
        for i in range(sub._limit + 5):
            notifier.publish(JOBS, f"job{i} {DONE}")
        got = sub.drain()
        assert got[-1] == MISSED and sub._limit <= len(got) - 1 < sub._limit + 5  # some were dropped
        notifier.publish(JOBS, f"x {DONE}")
        assert sub.drain() == [f"x {DONE}"]  # a queue that never filled reports nothing missed
    finally:
        sub.close()


def test_wake_interrupts_a_wait_from_another_thread(tmp_path: Path) -> None:
    sub = LocalNotifier(tmp_path).subscribe(QUEUE)
    got: list[list[str]] = []
    waiter = threading.Thread(target=lambda: got.append(sub.wait(float(NEVER_S))))
    waiter.start()
    sub.wake()
    waiter.join(WAIT_S)
    sub.close()
    assert not waiter.is_alive() and got == [[]]


def test_socket_paths_stay_short_under_a_deep_data_dir(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d" * 30] * 4)
    notifier = LocalNotifier(deep)
    sub = notifier.subscribe(QUEUE)
    try:
        assert len(str(sub.path)) < 108
        notifier.publish(QUEUE, "deep")
        assert LocalNotifier(deep).directory == notifier.directory  # every process finds the same place
        assert sub.wait(WAIT_S) == ["deep"]
    finally:
        sub.close()


def collect(sub, n: int) -> list[str]:
    """The next ``n`` payloads (a PostgreSQL LISTEN connection hands them over asynchronously)."""
    got: list[str] = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < n and time.monotonic() < deadline:
        got += sub.wait(deadline - time.monotonic())
    return got


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_store_publishes_each_change_after_its_commit(kind: str, tmp_path: Path, request) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}" if kind == "sqlite" else request.getfixturevalue("postgres_url")
    store = open_store(url)
    queue, jobs = store.events.subscribe(QUEUE), store.events.subscribe(JOBS)
    try:
        store.create(Job(id="a", endpoint=APP, input={}, webhook_url="http://127.0.0.1:9/hook"))
        assert collect(queue, 1) == [APP]
        [claimed] = store.claim_batch(APP, "w", lambda inp: 0, 1, 30.0)
        store.start([claimed.id], "w")
        store.append_log("a", LogEntry("hello"))
        store.complete("a", result={"ok": True}, worker_id="w")
        assert collect(jobs, 4) == [f"a {STARTED}", f"a {LOG}", f"a {DONE}", f"a {WEBHOOK}"]
        assert store.webhook("a") is not None  # the webhook row was committed before the notification
        store.create(Job(id="b", endpoint=APP, input={}))
        assert collect(queue, 1) == [APP]
        store.request_cancel("b")  # a queued job cancelled: done, no webhook owed
        assert collect(jobs, 1) == [f"b {DONE}"]
        assert jobs.wait(0.2) == []
    finally:
        queue.close()
        jobs.close()
        store.close()


def test_a_postgres_subscription_survives_a_database_restart(postgres_server, postgres_url: str) -> None:
    store = open_store(postgres_url)
    sub = store.events.subscribe(QUEUE)
    fd = sub.fileno()
    try:
        postgres_server.restart()
        assert MISSED in collect(sub, 1)  # re-connected: anything may have changed meanwhile
        postgres_server.wait_accepting()
        store.create(Job(id="after", endpoint=APP, input={}))
        assert collect(sub, 1) == [APP] and sub.fileno() == fd  # an asyncio reader on it keeps working
    finally:
        sub.close()
        store.close()


# -- a live server whose fallback polls never fire


class Hooks:
    def __init__(self) -> None:
        self.bodies: dict[str, dict] = {}
        self.cond = threading.Condition()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with hooks.cond:
                    hooks.bodies[body["request_id"]] = body
                    hooks.cond.notify_all()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait(self, request_id: str) -> dict:
        with self.cond:
            assert self.cond.wait_for(lambda: request_id in self.bodies, WAIT_S), "no webhook arrived"
            return self.bodies[request_id]


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    yield h
    h.httpd.shutdown()
    h.httpd.server_close()


@pytest.fixture(scope="module")
def event_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {
        "FAL_ONPREM_POLL_FALLBACK_S": NEVER_S,
        "FAL_ONPREM_WEBHOOK_POLL_S": NEVER_S,
        "FAL_ONPREM_URL_ALLOW_LIST": "127.0.0.1",
        # batches: up to 4 jobs, waiting for company far longer than any test
        "FAL_ONPREM_PIPELINES": json.dumps({APP: {"max_batch": 4, "max_wait_ms": int(NEVER_S) * 1000}}),
    }
    server = LiveServer(tmp_path_factory.mktemp("events"), env=env)
    server.start()
    yield server
    server.stop()


def test_a_full_batch_starts_when_its_last_job_is_submitted(event_server: LiveServer) -> None:
    """A burst of max_batch jobs fills one batch; the last submit wakes the idle worker, no poll or window."""
    subs = [
        httpx.post(f"{event_server.url}/queue/{APP}", json={"image_url": png_data_uri(), "seed": i}, timeout=10).json()
        for i in range(4)
    ]
    for sub in subs:
        assert wait_completed(sub["status_url"], timeout=WAIT_S)["metrics"]["batch_size"] == 4


def test_webhook_is_sent_when_its_job_completes(event_server: LiveServer, hooks: Hooks) -> None:
    ids = [
        httpx.post(
            f"{event_server.url}/queue/{APP}",
            params={"fal_webhook": hooks.url},
            json={"image_url": png_data_uri(), "seed": i},
            timeout=10,
        ).json()["request_id"]
        for i in range(4)
    ]
    for request_id in ids:
        assert hooks.wait(request_id)["status"] == "OK"


def test_status_stream_ends_when_its_job_completes(event_server: LiveServer) -> None:
    subs = [
        httpx.post(f"{event_server.url}/queue/{APP}", json={"image_url": png_data_uri(), "seed": i}, timeout=10).json()
        for i in range(4)
    ]
    events = []
    with httpx.stream("GET", subs[-1]["status_url"] + "/stream", timeout=WAIT_S) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["status"] == "COMPLETED"


def test_run_answers_when_its_job_completes(tmp_path: Path) -> None:
    # max_wait_ms 0: a lone sync request is due at once; it starts and answers only through notifications
    env = {"FAL_ONPREM_POLL_FALLBACK_S": NEVER_S, "FAL_ONPREM_PIPELINES": json.dumps({APP: {"max_wait_ms": 0}})}
    server = LiveServer(tmp_path, env=env)
    server.start()
    try:
        for seed in range(3):
            r = httpx.post(f"{server.url}/run/{APP}", json={"image_url": png_data_uri(), "seed": seed}, timeout=WAIT_S)
            assert r.status_code == 200 and r.json()["seed"] == seed
    finally:
        server.stop()


def test_without_notifications_polling_alone_finishes_jobs(tmp_path: Path) -> None:
    env = {"FAL_ONPREM_NOTIFY_EVENTS": "false", "FAL_ONPREM_POLL_FALLBACK_S": "0.05"}
    server = LiveServer(tmp_path, env=env)
    server.start()
    try:
        notify_dir = SQLiteJobStore(tmp_path / "jobs.sqlite").events.directory
        assert not list(notify_dir.glob("*/*"))  # nobody subscribed
        r = httpx.post(f"{server.url}/run/{APP}", json={"image_url": png_data_uri(), "seed": 5}, timeout=WAIT_S)
        assert r.status_code == 200 and r.json()["seed"] == 5
    finally:
        server.stop()
