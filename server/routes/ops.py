"""Liveness, readiness per pipeline, Prometheus metrics.

With API keys configured, details need a key (``Authorization: Key <key>`` or ``Bearer <key>``):
``/healthz`` stays open, ``/readyz`` answers without a key with its status code and ``{"ready": ...}``
only (enough for a load balancer; worker host names, pids and failure reasons need a key), and
``/metrics`` answers 401 without a key. Without keys everything is open, as the rest of the API.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from server.auth import caller_key_id, request_key_id
from server.errors import FalError
from server.jobs import READY_STALE_S
from server.metrics import render_metrics

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def pipeline_readiness(request: Request) -> dict[str, dict[str, Any]]:
    """Per endpoint: ``ready`` / ``loading`` / ``failed`` / ``unavailable`` with a reason."""
    now = time.time()
    states = [s for s in request.app.state.store.pipeline_states() if now - s.updated_at < READY_STALE_S]
    out: dict[str, dict[str, Any]] = {}
    for endpoint_id, spec in request.app.state.endpoints.items():
        if spec.pipeline is None:
            out[endpoint_id] = {"state": "unavailable", "reason": spec.unavailable_reason, "workers": []}
            continue
        mine = [s for s in states if s.endpoint == endpoint_id]
        workers = [{"worker": s.worker_id, "device": s.device, "state": s.state, "reason": s.reason} for s in mine]
        if any(s.state in ("ready", "standby") for s in mine):  # standby: loads when a request needs it
            state, reason = "ready", ""
        elif any(s.state == "loading" for s in mine) or not mine:
            state, reason = "loading", "" if mine else "no worker has reported yet"
        else:
            state, reason = "failed", mine[0].reason
        out[endpoint_id] = {"state": state, "reason": reason, "workers": workers}
    return out


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """200 when at least one pipeline is ready to serve; the body details every pipeline."""
    pipelines = pipeline_readiness(request)
    ready = any(p["state"] == "ready" for p in pipelines.values())
    body: dict[str, Any] = {"ready": ready, "pipelines": pipelines} if _may_see_details(request) else {"ready": ready}
    return JSONResponse(body, status_code=200 if ready else 503)


def _may_see_details(request: Request) -> bool:
    """True without configured keys, or with a valid one."""
    try:
        request_key_id(request)
    except FalError:
        return False
    return True


@router.get("/metrics", dependencies=[Depends(caller_key_id)])
def metrics(request: Request) -> Response:
    body, content_type = render_metrics(request.app.state.store)
    return Response(body, media_type=content_type)
