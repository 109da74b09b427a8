"""fal queue API: submit, status (+ SSE stream), result, cancel (fal-protocol.md §3).

Submit routes are made per endpoint so that each validates (and documents in OpenAPI) its exact
schema. Request routes accept the ``owner/alias`` prefix (what both clients use) or the full id.
This module must not use ``from __future__ import annotations``: the per-endpoint body types are
closure variables that FastAPI has to see as real classes.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator

from anyio import to_thread
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pipelines.contract import EndpointSpec
from server import jobs
from server.auth import caller_key_id
from server.errors import SUBMIT_RESPONSES, FalError, job_error_response
from server.store import JobStore
from server.urls import base_url, request_urls

STREAM_KEEPALIVE_S = 10.0
QUEUED_STREAM_MIN_S = 0.1  # a queued job's stream re-reads its position at most this often (busy queues)


def _store(request: Request) -> JobStore:
    return request.app.state.store


def submit_route(spec: EndpointSpec):
    input_model = spec.input_model

    def submit(
        request: Request,
        body: input_model,  # type: ignore[valid-type]
        fal_webhook: str | None = Query(default=None, description="URL to POST the result to"),
        x_fal_queue_priority: str | None = Header(default=None),
        x_fal_request_timeout: str | None = Header(default=None),
        key_id: str | None = Depends(caller_key_id),
    ) -> JSONResponse:
        if fal_webhook is not None:
            request.app.state.check_webhook_url(fal_webhook)
        base = base_url(request)
        job = jobs.submit(
            _store(request),
            spec,
            body,
            base=base,
            key_id=key_id,
            priority=x_fal_queue_priority,
            start_timeout=x_fal_request_timeout,
            webhook_url=fal_webhook,
            enabled=request.app.state.settings.pipeline(spec.endpoint_id).enabled,
            caps=request.app.state.settings.caps(spec.endpoint_id),
            reports=request.app.state.job_events.pipeline_states(),
        )
        payload = {
            "status": "IN_QUEUE",
            "request_id": job.id,
            **request_urls(base, job.app, job.id),
            "queue_position": _store(request).queue_position(job),
            "logs": None,
            "metrics": {},
        }
        if fal_webhook is not None:
            payload["gateway_request_id"] = job.id
        return JSONResponse(payload, headers={"x-fal-request-id": job.id})

    submit.__name__ = f"submit_{spec.endpoint_id.replace('/', '_').replace('-', '_')}"
    return submit


def build_router(endpoints: dict[str, EndpointSpec]) -> APIRouter:
    router = APIRouter(prefix="/queue", tags=["queue"])

    for spec in endpoints.values():
        router.add_api_route(
            f"/{spec.endpoint_id}",
            submit_route(spec),
            methods=["POST"],
            responses=SUBMIT_RESPONSES,
            summary=f"Submit a request to {spec.endpoint_id}",
            description=spec.title,
        )

    @router.get("/{prefix:path}/requests/{request_id}/status")
    def status(
        request: Request,
        prefix: str,
        request_id: str,
        logs: str | None = None,
        key_id: str | None = Depends(caller_key_id),
    ) -> JSONResponse:
        store = _store(request)
        job = jobs.find_job(store, prefix, request_id, key_id)
        entries = store.logs(job.id) if jobs.want_logs(logs) else None
        body = jobs.status_body(store, job, base_url(request), entries)
        code = 200 if job.status == "COMPLETED" else 202
        return JSONResponse(body, status_code=code, headers={"x-fal-request-id": job.id})

    @router.get("/{prefix:path}/requests/{request_id}/status/stream")
    async def status_stream(
        request: Request,
        prefix: str,
        request_id: str,
        logs: str | None = None,
        key_id: str | None = Depends(caller_key_id),
    ) -> StreamingResponse:
        store = _store(request)
        job = await to_thread.run_sync(jobs.find_job, store, prefix, request_id, key_id)
        base = base_url(request)
        with_logs = jobs.want_logs(logs)

        def poll(sent_logs: int) -> tuple[dict, int]:
            """One store round trip per tick: the status body with the log lines not sent yet."""
            current = store.get(job.id)
            assert current is not None
            new_logs = store.logs(job.id, sent_logs) if with_logs else None
            return jobs.status_body(store, current, base, new_logs), len(new_logs or [])

        async def events() -> AsyncIterator[str]:
            # An event whenever the status or queue position changes or new log lines arrive; each
            # event carries only the new lines (the JS client appends them to its own list).
            # Closed only after the COMPLETED event.
            # Woken by this job's changes, and while queued by any job's (its position moves); Starlette
            # ends the stream when the client disconnects.
            sent_logs, last_state, last_time = 0, None, time.monotonic()
            hub = request.app.state.job_events
            with hub.watch(job.id) as watch:
                while True:
                    body, fresh = await to_thread.run_sync(poll, sent_logs)
                    watch.follow_all_jobs(body["status"] == "IN_QUEUE")
                    state = (body["status"], body.get("queue_position"))
                    if fresh or state != last_state or body["status"] == "COMPLETED":
                        yield f"data: {json.dumps(body)}\n\n"
                        sent_logs += fresh
                        last_state, last_time = state, time.monotonic()
                    if body["status"] == "COMPLETED":
                        return
                    if time.monotonic() - last_time > STREAM_KEEPALIVE_S:
                        yield ": ping\n\n"
                        last_time = time.monotonic()
                    polled = time.monotonic()
                    await watch.wait(min(hub.fallback_s, STREAM_KEEPALIVE_S))
                    if body["status"] == "IN_QUEUE":
                        await asyncio.sleep(max(0.0, polled + QUEUED_STREAM_MIN_S - time.monotonic()))

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"x-fal-request-id": job.id, "cache-control": "no-cache"},
        )

    @router.get("/{prefix:path}/requests/{request_id}")
    def result(request: Request, prefix: str, request_id: str, key_id: str | None = Depends(caller_key_id)) -> Response:
        job = jobs.find_job(_store(request), prefix, request_id, key_id)
        if job.status != "COMPLETED":
            raise FalError(400, "Request is still in progress", "request_not_completed", **{"x-fal-request-id": job.id})
        if job.error:
            return job_error_response(job.error, job.id)
        return JSONResponse(job.result, headers={"x-fal-request-id": job.id})

    @router.put("/{prefix:path}/requests/{request_id}/cancel")
    def cancel(
        request: Request, prefix: str, request_id: str, key_id: str | None = Depends(caller_key_id)
    ) -> JSONResponse:
        store = _store(request)
        try:
            job = jobs.find_job(store, prefix, request_id, key_id)
        except FalError as exc:  # fal's cancel answers carry a status word, also for unknown ids
            if exc.status_code == 404:
                return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
            raise
        outcome = store.request_cancel(job.id)
        code = {"CANCELLATION_REQUESTED": 202, "ALREADY_COMPLETED": 400, "NOT_FOUND": 404}[outcome]
        return JSONResponse({"status": outcome}, status_code=code, headers={"x-fal-request-id": job.id})

    @router.post("/{path:path}", include_in_schema=False)
    def unknown_endpoint(path: str) -> JSONResponse:
        raise FalError(404, f"Application '{path}' not found", "application_not_found")

    return router
