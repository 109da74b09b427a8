"""Webhooks: outbox written with the completion, fal's payload and signatures, retries, restarts, SSRF.

Receivers are small HTTP servers on 127.0.0.1 in a thread; the live servers allow-list 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fal_client
import httpx
import pytest

from server.config import Settings
from server.errors import FalError
from server.store import Job, SQLiteJobStore
from server.webhook_signing import WebhookSigner, verify
from server.webhooks import WebhookSender, backoff_s, url_checker, webhook_body
from tests.support.live_server import LiveServer
from tests.support.server_fixtures import png_data_uri, python_client

APP = "test/echo"
ERROR_422 = {"status_code": 422, "detail": [{"loc": ["body", "x"], "msg": "bad", "type": "t"}], "error_type": "v"}


# -- a webhook receiver


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every POST; answers ``codes[path]`` (default 200)."""

    codes: dict[str, int] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def for_path(self, path: str) -> list[Hit]:
        return [h for h in list(self.hits) if h.path == path]

    def wait(self, path: str, count: int = 1, timeout: float = 30.0) -> list[Hit]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = self.for_path(path)
            if len(hits) >= count:
                return hits
            time.sleep(0.05)
        raise TimeoutError(f"{path}: {len(self.for_path(path))} of {count} webhook(s) arrived")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            rec.hits.append(Hit(self.path, dict(self.headers.items()), body, time.monotonic()))
            self.send_response(rec.codes.get(self.path, 200))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield rec
    httpd.shutdown()
    httpd.server_close()


def hook_env(max_attempts: int, backoff_base_s: float, backoff_max_s: float) -> dict[str, str]:
    return {
        "FAL_ONPREM_URL_ALLOW_LIST": "127.0.0.1",
        "FAL_ONPREM_WEBHOOK_POLL_S": "0.1",
        "FAL_ONPREM_WEBHOOK_TIMEOUT_S": "5",
        "FAL_ONPREM_WEBHOOK_MAX_ATTEMPTS": str(max_attempts),
        "FAL_ONPREM_WEBHOOK_BACKOFF_BASE_S": str(backoff_base_s),
        "FAL_ONPREM_WEBHOOK_BACKOFF_MAX_S": str(backoff_max_s),
    }


@pytest.fixture(scope="module")
def hook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("webhooks"), env=hook_env(3, 0.4, 5.0))
    server.start()
    yield server
    server.stop()


def server_store(server: LiveServer) -> SQLiteJobStore:
    return SQLiteJobStore(server.data_dir / "jobs.sqlite")


def wait_webhook_state(server: LiveServer, job_id: str, state: str, timeout: float = 30.0) -> None:
    store = server_store(server)
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = store.webhook(job_id)
        if row is not None and row.state == state:
            return
        time.sleep(0.05)
    raise TimeoutError(f"webhook of {job_id} never reached {state}: {row}")


def submit(server: LiveServer, webhook: str, **args: object) -> httpx.Response:
    return httpx.post(
        f"{server.url}/queue/{APP}",
        params={"fal_webhook": webhook},
        json={"image_url": png_data_uri(), "seed": 3, **args},
        timeout=10,
    )


# -- the outbox in the store


def _job(store: SQLiteJobStore, job_id: str, webhook: str | None = "http://127.0.0.1:9/hook", **kw: object) -> Job:
    job = Job(id=job_id, endpoint="a/b", input={}, webhook_url=webhook, **kw)  # type: ignore[arg-type]
    store.create(job)
    return job


def test_every_way_of_completing_a_job_owes_its_webhook(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    _job(store, "ok")
    _job(store, "no-hook", webhook=None)
    assert [j.id for j in store.claim_batch("a/b", "w", lambda _: 0, 8, 30)] == ["ok", "no-hook"]
    assert store.complete("ok", result={"x": 1})
    assert store.complete("no-hook", result={"x": 1})
    assert store.webhook("ok").state == "pending" and store.webhook("ok").url == "http://127.0.0.1:9/hook"
    assert store.webhook("no-hook") is None
    assert not store.complete("ok", result={"x": 2})  # a second completion adds nothing
    _job(store, "cancelled")
    assert store.request_cancel("cancelled") == "CANCELLATION_REQUESTED"
    _job(store, "expired", start_deadline=10.0)
    assert store.expire_deadlines(now=20.0) == ["expired"]
    _job(store, "lost")
    store.claim_batch("a/b", "w", lambda _: 0, 8, lease_s=1)
    store.start(["lost"], "w")
    assert store.recover_expired_leases(max_attempts=1, now=time.time() + 5) == ["lost"]
    for job_id in ("cancelled", "expired", "lost"):
        assert store.get(job_id).status == "COMPLETED"
        assert store.webhook(job_id).state == "pending", job_id
    # A job re-queued after a lost lease is not finished: nothing is owed yet.
    _job(store, "requeued")
    store.claim_batch("a/b", "w", lambda _: 0, 8, lease_s=1)
    store.recover_expired_leases(max_attempts=2, now=time.time() + 5)
    assert store.get("requeued").status == "IN_QUEUE" and store.webhook("requeued") is None


def test_deliveries_are_leased_to_one_sender_at_a_time(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    for i in range(3):
        _job(store, f"j{i}")
        store.claim_batch("a/b", "w", lambda _: 0, 8, 30)
        store.complete(f"j{i}", result={})
    now = time.time()
    first = store.claim_webhooks("api-1", limit=2, lease_s=60, now=now)
    second = store.claim_webhooks("api-2", limit=10, lease_s=60, now=now)
    assert len(first) == 2 and len(second) == 1
    assert not {d.job_id for d in first} & {d.job_id for d in second}
    assert store.claim_webhooks("api-3", limit=10, lease_s=60, now=now) == []
    # Only the lease holder records the attempt; a retry becomes due again at its time.
    d = first[0]
    assert not store.record_webhook_attempt(d.job_id, "api-2", "delivered", status_code=200)
    assert store.record_webhook_attempt(d.job_id, "api-1", "retry", error="HTTP 500", next_attempt_at=now + 100)
    row = store.webhook(d.job_id)
    assert (row.state, row.attempts, row.last_error) == ("pending", 1, "HTTP 500")
    assert d.job_id not in {x.job_id for x in store.claim_webhooks("api-3", 10, 60, now=now + 99)}
    # A sender that died holding a lease: the row comes back once the lease runs out.
    assert [x.job_id for x in store.claim_webhooks("api-3", 10, 60, now=now + 100)] == [d.job_id]
    later = store.claim_webhooks("api-4", 10, 60, now=now + 161)
    assert {x.job_id for x in later} == {first[1].job_id, second[0].job_id, d.job_id}
    store.release_webhooks("api-4")
    assert len(store.claim_webhooks("api-5", 10, 60, now=now + 162)) == 3


# -- payload, backoff, URL check


def test_payloads_follow_fal() -> None:
    ok = json.loads(webhook_body(Job(id="r1", endpoint="a/b", input={}, result={"seed": 5})))
    assert ok == {"request_id": "r1", "gateway_request_id": "r1", "status": "OK", "payload": {"seed": 5}, "error": None}
    err = json.loads(webhook_body(Job(id="r2", endpoint="a/b", input={}, error=ERROR_422)))
    assert err["status"] == "ERROR" and err["error"] == "Invalid status code: 422"
    assert err["payload"]["detail"] == ERROR_422["detail"]
    nan = json.loads(webhook_body(Job(id="r3", endpoint="a/b", input={}, result={"score": math.nan})))
    assert nan["status"] == "OK" and nan["payload"] is None and "serialised" in nan["payload_error"]


def test_default_backoff_spreads_10_attempts_over_about_2_hours() -> None:
    s = Settings()
    waits = [backoff_s(n, s.webhook_backoff_base_s, s.webhook_backoff_max_s) for n in range(1, s.webhook_max_attempts)]
    assert waits == sorted(waits) and waits[0] == s.webhook_backoff_base_s
    assert 1.5 * 3600 <= sum(waits) <= 2.5 * 3600


def test_loopback_webhook_needs_the_allow_list() -> None:
    with pytest.raises(FalError) as err:
        url_checker(Settings(url_allow_list=""))("http://127.0.0.1:9/hook")
    assert err.value.status_code == 422 and err.value.detail[0]["type"] == "url_not_allowed"
    url_checker(Settings(url_allow_list="127.0.0.1"))("http://127.0.0.1:9/hook")


def test_sender_in_process_delivers_and_gives_up(tmp_path: Path, receiver: Receiver) -> None:
    settings = Settings(
        data_dir=tmp_path, url_allow_list="127.0.0.1", webhook_max_attempts=2, webhook_backoff_base_s=0.0
    )
    store = SQLiteJobStore(settings.resolved_store_url.removeprefix("sqlite:///"))
    receiver.codes["/inproc-bad"] = 404
    for job_id, path in (("good", "/inproc-good"), ("bad", "/inproc-bad")):
        _job(store, job_id, webhook=receiver.url(path), key_id="key-1")
    store.claim_batch("a/b", "w", lambda _: 0, 8, 30)
    store.complete("good", result={"v": 1})
    store.complete("bad", error=ERROR_422)
    signer = WebhookSigner.load_or_create(tmp_path)

    async def drive() -> None:
        sender = WebhookSender(store, settings, signer)
        for _ in range(2):  # the retry is due at once (backoff 0)
            assert await sender.poll_once() >= 1
            await asyncio.gather(*sender._tasks)
        await sender.stop()

    asyncio.run(drive())
    (hit,) = receiver.for_path("/inproc-good")
    assert hit.headers["X-Fal-Webhook-User-Id"] == "key-1"
    assert verify(hit.headers, hit.body, signer.jwks())
    assert store.webhook("good").state == "delivered"
    assert len(receiver.for_path("/inproc-bad")) == 2
    row = store.webhook("bad")
    assert (row.state, row.attempts, row.last_status, row.last_error) == ("failed", 2, 404, "Invalid status code: 404")


# -- end to end on a live server


@pytest.fixture
def fal(hook_server: LiveServer) -> Iterator[fal_client.SyncClient]:
    with python_client(hook_server.url) as c:
        yield c


def test_signed_webhooks_for_a_result_and_a_failure(
    hook_server: LiveServer, receiver: Receiver, fal: fal_client.SyncClient
) -> None:
    ok = fal.submit(APP, arguments={"image_url": png_data_uri(), "seed": 9}, webhook_url=receiver.url("/e2e-ok"))
    bad = fal.submit(APP, arguments={"image_url": png_data_uri(), "fail": "item"}, webhook_url=receiver.url("/e2e-bad"))
    (ok_hit,) = receiver.wait("/e2e-ok")
    (bad_hit,) = receiver.wait("/e2e-bad")
    jwks = httpx.get(f"{hook_server.url}/.well-known/jwks.json", timeout=10).json()
    assert httpx.get(f"{hook_server.url}/rest/.well-known/jwks.json", timeout=10).json() == jwks
    for hit, handle in ((ok_hit, ok), (bad_hit, bad)):
        assert verify(hit.headers, hit.body, jwks)
        assert not verify(hit.headers, hit.body + b" ", jwks)
        assert hit.headers["X-Fal-Webhook-Request-Id"] == handle.request_id
        assert hit.headers["X-Fal-Webhook-User-Id"] == "anonymous"
        assert hit.json["request_id"] == hit.json["gateway_request_id"] == handle.request_id
    assert ok_hit.json["status"] == "OK" and ok_hit.json["error"] is None
    assert ok_hit.json["payload"] == ok.get()
    assert ok_hit.json["payload"]["seed"] == 9
    assert bad_hit.json["status"] == "ERROR"
    assert bad_hit.json["error"] == "Invalid status code: 422"
    assert bad_hit.json["payload"]["detail"][0]["loc"] == ["body", "image_url"]


def test_retries_back_off_and_stop_after_max_attempts(hook_server: LiveServer, receiver: Receiver) -> None:
    receiver.codes["/always-500"] = 500
    response = submit(hook_server, receiver.url("/always-500"))
    assert response.status_code == 200, response.text
    job_id = response.json()["request_id"]
    wait_webhook_state(hook_server, job_id, "failed")
    hits = receiver.for_path("/always-500")
    assert len(hits) == 3  # webhook_max_attempts
    assert {h.json["request_id"] for h in hits} == {job_id}
    gaps = [b.at - a.at for a, b in itertools.pairwise(hits)]
    assert gaps[0] >= 0.4 and gaps[1] >= 0.8, gaps  # base, then doubled
    row = server_store(hook_server).webhook(job_id)
    assert (row.attempts, row.last_status, row.delivered_at) == (3, 500, None)
    time.sleep(1.0)
    assert len(receiver.for_path("/always-500")) == 3  # given up: nothing more is sent


def test_blocked_webhook_urls_are_refused_at_submit(hook_server: LiveServer) -> None:
    for url, error_type in (("http://10.0.0.1/x", "url_not_allowed"), ("ftp://127.0.0.1/x", "invalid_url")):
        response = submit(hook_server, url)
        assert response.status_code == 422, response.text
        (detail,) = response.json()["detail"]
        assert detail["loc"] == ["query", "fal_webhook"] and detail["type"] == error_type


def test_delivery_survives_a_server_restart(tmp_path: Path, receiver: Receiver) -> None:
    server = LiveServer(tmp_path, env=hook_env(50, 0.3, 0.6))
    server.start()
    try:
        receiver.codes["/flaky"] = 503  # the receiver is down when the job completes
        response = submit(server, receiver.url("/flaky"))
        job_id = response.json()["request_id"]
        receiver.wait("/flaky", count=2)
        jwks_before = httpx.get(f"{server.url}/.well-known/jwks.json", timeout=10).json()
        server.stop()
        row = server_store(server).webhook(job_id)
        assert row.state == "pending" and row.attempts >= 2
        receiver.codes["/flaky"] = 200  # fixed while the server is down
        server.start()
        wait_webhook_state(server, job_id, "delivered")
        last = receiver.for_path("/flaky")[-1]
        assert last.json["request_id"] == job_id and last.json["status"] == "OK"
        jwks_after = httpx.get(f"{server.url}/.well-known/jwks.json", timeout=10).json()
        assert jwks_after == jwks_before  # the signing key is kept in the data dir
        assert verify(last.headers, last.body, jwks_after)
    finally:
        server.stop()
