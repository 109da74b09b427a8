"""Synchronous run (``POST /run/{endpoint id}``, fal-protocol.md §4.1).

A run is a normal job at normal priority that the request waits for; if the client goes away
before it finishes, the job is cancelled so no GPU time is spent on an answer nobody reads.
This module must not use ``from __future__ import annotations`` (see routes/queue.py).
"""

from anyio import to_thread
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from pipelines.contract import EndpointSpec
from server import jobs
from server.auth import caller_key_id
from server.errors import SUBMIT_RESPONSES, FalError, error_response, job_error_response
from server.store import JobStore
from server.urls import base_url
from server.waiting import CLIENT_GONE, SHUTTING_DOWN, wait_until_done

SHUTDOWN_RETRY_AFTER_S = 5


async def shutdown_response(store: JobStore, job_id: str) -> Response:
    """What a waiting run answers when the server shuts down: a JSON 503 with a retry hint. Its job is
    cancelled (if queued it would otherwise run after the restart for a client that has gone)."""
    await to_thread.run_sync(store.request_cancel, job_id)
    return error_response(
        503,
        "The server is shutting down; retry the request",
        "server_shutting_down",
        {"Retry-After": str(SHUTDOWN_RETRY_AFTER_S), "x-fal-request-id": job_id},
    )


def run_route(spec: EndpointSpec):
    input_model = spec.input_model

    async def run(
        request: Request,
        body: input_model,  # type: ignore[valid-type]
        x_fal_request_timeout: str | None = Header(default=None),
        key_id: str | None = Depends(caller_key_id),
    ) -> Response:
        store: JobStore = request.app.state.store
        job_id = jobs.new_request_id()
        submit = jobs.submit_from_loop(
            request.app.state.job_writes,
            spec,
            body,
            base=base_url(request),
            key_id=key_id,
            priority="normal",
            start_timeout=x_fal_request_timeout,
            webhook_url=None,
            enabled=request.app.state.settings.pipeline(spec.endpoint_id).enabled,
            caps=request.app.state.settings.caps(spec.endpoint_id),
            reports=request.app.state.job_events.pipeline_states(),
            job_id=job_id,
        )
        current = await wait_until_done(request, job_id, submit)
        if current is CLIENT_GONE:
            await to_thread.run_sync(store.request_cancel, job_id)
            return Response(status_code=499)
        if current is SHUTTING_DOWN:
            return await shutdown_response(store, job_id)
        if current.error:
            return job_error_response(current.error, current.id)
        return JSONResponse(current.result, headers={"x-fal-request-id": current.id})

    run.__name__ = f"run_{spec.endpoint_id.replace('/', '_').replace('-', '_')}"
    return run


def build_router(endpoints: dict[str, EndpointSpec]) -> APIRouter:
    router = APIRouter(prefix="/run", tags=["run"])
    for spec in endpoints.values():
        router.add_api_route(
            f"/{spec.endpoint_id}",
            run_route(spec),
            methods=["POST"],
            responses=SUBMIT_RESPONSES,
            response_model=spec.output_model,
            response_model_exclude_none=True,
            summary=f"Run {spec.endpoint_id} and wait for the result",
            description=spec.title,
        )

    @router.post("/{path:path}", include_in_schema=False)
    def unknown_endpoint(path: str) -> JSONResponse:
        raise FalError(404, f"Application '{path}' not found", "application_not_found")

    return router
