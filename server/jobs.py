"""Queue semantics shared by the routes: submitting, status bodies, readiness checks.

Status bodies follow fal-protocol.md §3.2: only IN_QUEUE / IN_PROGRESS / COMPLETED, ``queue_position``
while queued, the ``logs`` key always present, failures and cancellations as COMPLETED + ``error``.
"""

from __future__ import annotations

import functools
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from anyio import to_thread
from pydantic import BaseModel

from pipelines.common.schema_types import IMAGE_SIZE_PRESETS, ImageSize, resolve_image_size
from pipelines.contract import EndpointSpec
from server.config import Settings
from server.errors import FalError, error_text
from server.group_commit import GroupCommit
from server.store import Job, JobStore, LogEntry, PipelineState
from server.urls import request_urls

READY_STALE_S = 30.0  # workers re-report every second; older reports belong to dead workers
MAX_START_TIMEOUT_S = 7 * 24 * 3600.0  # a longer start deadline is a mistake, not a wish


def new_request_id() -> str:
    return str(uuid.uuid4())


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def log_dict(entry: LogEntry) -> dict[str, Any]:
    return {
        "message": entry.message,
        "level": entry.level,
        "source": entry.source,
        "timestamp": iso(entry.timestamp),
    }


def parse_priority(value: str | None) -> str:
    if value is None or value == "":
        return "normal"
    if value not in ("normal", "low"):
        raise FalError(
            422,
            [{"loc": ["header", "x-fal-queue-priority"], "msg": "must be 'normal' or 'low'", "type": "enum"}],
            "validation_error",
        )
    return value


def parse_start_timeout(value: str | None) -> float | None:
    """``X-Fal-Request-Timeout``: seconds (float or int) the request may wait to start; > 1 and at most a week."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 1 < seconds <= MAX_START_TIMEOUT_S:  # also false for nan; inf is over the cap
        raise FalError(
            422,
            [
                {
                    "loc": ["header", "x-fal-request-timeout"],
                    "msg": f"must be a number > 1 and <= {MAX_START_TIMEOUT_S:.0f}",
                    "type": "value_error",
                }
            ],
            "validation_error",
        )
    return seconds


def unavailable_reason(
    spec: EndpointSpec,
    reports: list[PipelineState],
    enabled: bool = True,
    *,
    silent_since: float | None = None,
    grace_s: float = 0.0,
) -> str | None:
    """Why no worker can run this endpoint now, or None when one can (or is still loading it).

    ``reports``: the workers' pipeline states (``store.pipeline_states()``). Unavailable: the pipeline is not
    built or is disabled, or every live worker reports it failed. With
    ``silent_since`` (e.g. the API's start), also when no live worker has reported it for ``grace_s``
    since then or since its last report.
    """
    if spec.pipeline is None:
        return f"{spec.endpoint_id}: {spec.unavailable_reason}"
    if not enabled:
        return f"{spec.endpoint_id} is disabled in this server's configuration"
    now = time.time()
    states = [s for s in reports if s.endpoint == spec.endpoint_id]
    live = [s for s in states if now - s.updated_at < READY_STALE_S]
    if live and all(s.state == "failed" for s in live):
        return f"{spec.endpoint_id} is unavailable: {live[0].reason}"
    if not live and silent_since is not None:
        last = max([silent_since, *(s.updated_at for s in states)])
        if now - last > grace_s:
            return f"{spec.endpoint_id} is unavailable: no worker has served it for {now - last:.0f} s"
    return None


def ensure_available(spec: EndpointSpec, reports: list[PipelineState], enabled: bool = True) -> None:
    """503 unless some worker can run this endpoint (or is still loading it)."""
    reason = unavailable_reason(spec, reports, enabled)
    if reason is not None:
        raise FalError(503, reason, "pipeline_unavailable")


def fail_unservable(
    store: JobStore, endpoints: dict[str, EndpointSpec], settings: Settings, api_started: float
) -> dict[str, list[str]]:
    """Complete the queued jobs of every endpoint no live worker can serve with the 503 a submit would get
    now (a job accepted just before its pipeline failed to load must not wait forever)."""
    failed: dict[str, list[str]] = {}
    reports = store.pipeline_states()
    for endpoint in store.queue_depths():
        spec = endpoints.get(endpoint)
        if spec is None:
            continue
        reason = unavailable_reason(
            spec,
            reports,
            settings.pipeline(endpoint).enabled,
            silent_since=api_started,
            grace_s=settings.no_worker_grace_s,
        )
        if reason is not None:
            error = {"status_code": 503, "detail": reason, "error_type": "pipeline_unavailable"}
            failed[endpoint] = store.fail_queued(endpoint, error)
    return failed


def check_caps(body: BaseModel, caps: tuple[int, int]) -> None:
    """422 naming the field when a request asks for more steps or pixels than this server allows (one request
    must not hold a GPU for an hour). Only fields the endpoint has are checked."""
    max_steps, max_area = caps
    errors = []
    steps = getattr(body, "num_inference_steps", None)
    if isinstance(steps, int) and steps > max_steps:
        errors.append({
            "loc": ["body", "num_inference_steps"],
            "msg": f"must be at most {max_steps} on this server",
            "type": "less_than_equal",
            "ctx": {"le": max_steps},
        })  # fmt: skip
    size = getattr(body, "image_size", None)
    if isinstance(size, ImageSize) or (isinstance(size, str) and size in IMAGE_SIZE_PRESETS):
        width, height = resolve_image_size(size)
        if width * height > max_area:
            errors.append({
                "loc": ["body", "image_size"],
                "msg": f"width x height must be at most {max_area} pixels on this server (got {width}x{height})",
                "type": "value_error",
            })  # fmt: skip
    if errors:
        raise FalError(422, errors, "validation_error")


def new_job(
    store: JobStore,
    spec: EndpointSpec,
    body: BaseModel,
    *,
    base: str,
    key_id: str | None,
    priority: str | None,
    start_timeout: str | None,
    webhook_url: str | None,
    enabled: bool = True,
    caps: tuple[int, int] | None = None,
    reports: list[PipelineState] | None = None,
    job_id: str | None = None,
) -> Job:
    """The job a submit creates, after every check that may refuse it (422, 503).

    ``reports``: the workers' pipeline states if the caller has them (else read from the store); ``job_id``:
    an id chosen beforehand (a waiter registered for it before the job exists)."""
    if caps is not None:  # a request this server refuses is a 422, like any invalid field, whatever the load
        check_caps(body, caps)
    ensure_available(spec, store.pipeline_states() if reports is None else reports, enabled)
    timeout = parse_start_timeout(start_timeout)
    now = time.time()
    job = Job(
        id=job_id or new_request_id(),
        endpoint=spec.endpoint_id,
        input=body.model_dump(mode="json"),
        priority=parse_priority(priority),  # type: ignore[arg-type]
        key_id=key_id,
        base_url=base,
        created_at=now,
        start_deadline=None if timeout is None else now + timeout,
        webhook_url=webhook_url,
    )
    return job


def submit(store: JobStore, spec: EndpointSpec, body: BaseModel, **options: Any) -> Job:
    """Check and queue a job (``new_job``'s options); blocking: call it from a thread."""
    job = new_job(store, spec, body, **options)
    store.create(job)
    return job


async def submit_from_loop(writes: GroupCommit, spec: EndpointSpec, body: BaseModel, **options: Any) -> Job:
    """``submit`` from the event loop. A local store (SQLite) is written on the loop, together with the other
    submits of this turn (``GroupCommit``: no thread hop on the common path); a remote one from a thread."""
    store = writes.store
    if not store.local:
        return await to_thread.run_sync(functools.partial(submit, store, spec, body, **options))
    job = new_job(store, spec, body, **options)
    await writes.create(job)
    return job


def find_job(store: JobStore, prefix: str, request_id: str, key_id: str | None) -> Job:
    """The job a request URL names; 404 for an unknown id, another app, or another key's job."""
    job = store.get(request_id)
    prefix = prefix.strip("/")
    in_app = job is not None and prefix.count("/") >= 1 and (job.endpoint + "/").startswith(prefix + "/")
    if job is None or not in_app or (key_id is not None and job.key_id != key_id):
        raise FalError(404, f"Request {request_id} not found", "request_not_found")
    return job


def status_body(store: JobStore, job: Job, base: str, logs: list[LogEntry] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"status": job.status, "request_id": job.id, **request_urls(base, job.app, job.id)}
    if job.status == "IN_QUEUE":
        body["queue_position"] = store.queue_position(job)
    body["logs"] = None if logs is None else [log_dict(e) for e in logs]
    body["metrics"] = job.metrics if job.status == "COMPLETED" else {}
    if job.status == "COMPLETED" and job.error:
        body["error"] = error_text(job.error)  # the real reason, also for a validation list
        body["error_type"] = job.error.get("error_type")
    return body


def want_logs(value: str | None) -> bool:
    """``logs`` query: Python sends true/false, JS 1/0."""
    return (value or "").lower() in ("1", "true", "yes")
