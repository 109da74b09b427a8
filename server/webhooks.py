"""Webhooks (fal-protocol.md §9): signed, durable, retried delivery of finished jobs' results.

Whatever completes a job that has a ``webhook_url`` records an outbox row in the same store
transaction (server.store), so a crash between completion and delivery loses nothing. The API process
runs `WebhookSender`: it leases due rows (several API processes never send the same row at once),
POSTs fal's payload through the SSRF-guarded client, and on failure retries with exponential backoff
until ``webhook_max_attempts`` attempts were made. Bodies are signed with fal's four headers; the
public key is served as a JWKS at ``/.well-known/jwks.json`` (and ``/rest/...``, fal's REST host).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from server.config import Settings
from server.errors import FalError
from server.net.fetch import FetchError, post_bytes
from server.net.ssrf import BlockedUrl, InvalidUrl, UrlPolicy, check_url, policy_from_settings
from server.store import Job, JobStore
from server.store.base import WebhookDelivery
from server.webhook_signing import WebhookSigner

log = logging.getLogger("fal_onprem.webhooks")

ANONYMOUS_USER = "anonymous"
MAX_IN_FLIGHT = 16
LEASE_MARGIN_S = 30.0  # a claim outlives one attempt by this much; then another process may retry it
STOP_GRACE_S = 1.0  # on shutdown, in-flight attempts get this long before they are cancelled


# -- payload


def webhook_body(job: Job) -> bytes:
    """fal's webhook JSON for a finished job; ``payload_error`` when the result is not valid JSON."""
    body: dict[str, Any] = {"request_id": job.id, "gateway_request_id": job.id}
    if job.error is None:
        body.update(status="OK", payload=job.result, error=None)
    else:
        # fal's gateway reports the app's HTTP status; the payload is the app's error body.
        payload: dict[str, Any] = {"detail": job.error.get("detail", "Internal error")}
        if job.error.get("error_type"):
            payload["error_type"] = job.error["error_type"]
        code = int(job.error.get("status_code", 500))
        body.update(status="ERROR", payload=payload, error=f"Invalid status code: {code}")
    try:
        return json.dumps(body, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:  # e.g. NaN in an output, which JSON cannot carry
        body.update(payload=None, payload_error=f"The output could not be serialised to JSON: {exc}")
        return json.dumps(body).encode()


def backoff_s(failed_attempts: int, base_s: float, max_s: float) -> float:
    """Wait before the next attempt after ``failed_attempts`` failures: base, 2 x base, 4 x base ... capped."""
    return min(max_s, base_s * 2 ** max(0, failed_attempts - 1))


# -- submit-time check


def _invalid(url: str, message: str, error_type: str) -> FalError:
    detail = [{"loc": ["query", "fal_webhook"], "msg": message, "type": error_type, "input": url}]
    return FalError(422, detail, "validation_error")


def url_checker(settings: Settings) -> Callable[[str], None]:
    """``app.state.check_webhook_url``: 422 for a URL the SSRF policy refuses (delivery checks again)."""
    policy = policy_from_settings(settings)

    def check(url: str) -> None:
        try:
            check_url(url, policy)
        except BlockedUrl as exc:
            raise _invalid(url, f"webhook URL not allowed: {exc.reason}", "url_not_allowed") from exc
        except InvalidUrl as exc:
            raise _invalid(url, f"invalid webhook URL: {exc}", "invalid_url") from exc
        except (OSError, UnicodeError) as exc:
            raise _invalid(url, f"webhook host cannot be resolved: {exc}", "invalid_url") from exc

    return check


# -- delivery


class WebhookSender:
    """Delivers due outbox rows; one per API process (started by `delivery`)."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        signer: WebhookSigner,
        *,
        policy: UrlPolicy | None = None,
        owner: str | None = None,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.signer = signer
        base = policy or policy_from_settings(settings)
        self.policy = dataclasses.replace(base, total_timeout=settings.webhook_timeout_s)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Set when a completion owes a webhook (server.waiting); polling every webhook_poll_s catches
        # retries that came due and anything a lost notification would have left.
        self._wake = wake or asyncio.Event()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Unfinished rows go back to the outbox now rather than when their lease runs out.
        await to_thread.run_sync(self.store.release_webhooks, self.owner)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before looking, so a completion meanwhile wakes the next round
            try:
                await self.poll_once()
            except Exception:  # a busy or briefly unavailable store must not end delivery for good
                log.exception("webhook poll failed")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.webhook_poll_s)

    async def poll_once(self) -> int:
        """Claim due deliveries (up to the free in-flight slots) and start them; returns how many."""
        free = MAX_IN_FLIGHT - len(self._tasks)
        if free <= 0:
            return 0
        claimed = await to_thread.run_sync(self.store.claim_webhooks, self.owner, free, self.lease_s)
        for delivery in claimed:
            task = asyncio.create_task(self.deliver(delivery), name=f"webhook-{delivery.job_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed)

    async def deliver(self, delivery: WebhookDelivery) -> None:
        """One attempt, then record it: delivered (2xx), retry later, or give up after the last attempt."""
        job = await to_thread.run_sync(self.store.get, delivery.job_id)
        if job is None:
            await self._record(delivery, "failed", error="the job no longer exists")
            return
        body = webhook_body(job)
        headers = {
            "Content-Type": "application/json",
            **self.signer.sign_headers(job.id, job.key_id or ANONYMOUS_USER, body),
        }
        status: int | None = None
        error: str | None = None
        try:
            status = await post_bytes(delivery.url, self.policy, body, headers=headers)
        except FetchError as exc:
            error = exc.message
        except Exception as exc:  # record any failure as a failed attempt, never lose the row
            log.exception("webhook for %s: unexpected error", job.id)
            error = f"{type(exc).__name__}: {exc}"
        if status is not None and 200 <= status < 300:
            await self._record(delivery, "delivered", status_code=status)
            log.info("webhook for %s delivered (HTTP %d, attempt %d)", job.id, status, delivery.attempts + 1)
            return
        error = error or f"Invalid status code: {status}"
        attempt = delivery.attempts + 1
        if attempt >= self.settings.webhook_max_attempts:
            await self._record(delivery, "failed", status_code=status, error=error)
            log.warning("webhook for %s: giving up after %d attempts; last error: %s", job.id, attempt, error)
            return
        wait = backoff_s(attempt, self.settings.webhook_backoff_base_s, self.settings.webhook_backoff_max_s)
        await self._record(delivery, "retry", status_code=status, error=error, next_attempt_at=time.time() + wait)
        log.info("webhook for %s: attempt %d failed (%s); retrying in %.1fs", job.id, attempt, error, wait)

    async def _record(self, delivery: WebhookDelivery, outcome: str, **kwargs: Any) -> None:
        kept = await to_thread.run_sync(
            lambda: self.store.record_webhook_attempt(delivery.job_id, self.owner, outcome, **kwargs)  # type: ignore[arg-type]
        )
        if not kept:
            log.warning("webhook for %s: lease lost before the attempt was recorded", delivery.job_id)


@asynccontextmanager
async def delivery(app: FastAPI) -> AsyncIterator[WebhookSender]:
    """Run the sender for the app's lifetime (use inside the app's lifespan)."""
    sender = WebhookSender(
        app.state.store, app.state.settings, app.state.webhook_signer, wake=app.state.job_events.webhook_due
    )
    sender.start()
    try:
        yield sender
    finally:
        await sender.stop()


# -- JWKS

router = APIRouter(tags=["webhooks"])


@router.get("/.well-known/jwks.json", summary="Public key(s) that sign webhook deliveries")
@router.get("/rest/.well-known/jwks.json", include_in_schema=False)
def jwks(request: Request) -> JSONResponse:
    signer: WebhookSigner = request.app.state.webhook_signer
    return JSONResponse(signer.jwks(), headers={"Cache-Control": "public, max-age=300"})


def install(app: FastAPI, settings: Settings) -> None:
    """Signing key, submit-time URL check and the JWKS routes (the sender starts in the lifespan)."""
    app.state.webhook_signer = WebhookSigner.load_or_create(settings.secrets_path)
    app.state.check_webhook_url = url_checker(settings)
    app.include_router(router)
