"""fal-style error responses: ``{"detail": ..., "error_type": ...}`` + ``X-Fal-Error-Type``.

Validation errors keep fal's list shape ``{"detail": [{"loc", "msg", "type"}]}`` (status 422).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class FalErrorBody(BaseModel):
    detail: str | list[dict[str, Any]]
    error_type: str | None = None
    message: str | None = None


def _doc(description: str) -> dict[str, Any]:
    return {"model": FalErrorBody, "description": description}


# Documented answers of the submit and run routes besides success (OpenAPI).
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _doc("Missing or invalid API key (when keys are configured)"),
    413: _doc("Request body over the configured limit"),
    422: _doc("Invalid input: fal's validation list `[{loc, msg, type}]`"),
    503: _doc("The endpoint's pipeline is not built, or its weights are missing (the detail names the fix)"),
}


class FalError(Exception):
    """Raised by route helpers; rendered as a fal-style JSON error."""

    def __init__(self, status_code: int, detail: str | list[dict[str, Any]], error_type: str, **headers: str) -> None:
        super().__init__(str(detail))
        self.status_code = status_code
        self.detail = detail
        self.error_type = error_type
        self.headers = headers


def error_response(
    status_code: int,
    detail: str | list[dict[str, Any]],
    error_type: str | None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    out_headers = dict(headers or {})
    if error_type:
        body["error_type"] = error_type
        out_headers["X-Fal-Error-Type"] = error_type
    if isinstance(detail, str):
        body["message"] = detail  # the JS client shows body.message as the error text
    return JSONResponse(jsonable_encoder(body), status_code=status_code, headers=out_headers)


def job_error_response(error: dict[str, Any], request_id: str) -> JSONResponse:
    """The result call of a failed job: the job's own status code and body."""
    headers = {"x-fal-request-id": request_id}
    if error.get("error_type") == "request_timeout":
        headers["X-Fal-Request-Timeout-Type"] = "user"  # the caller's own deadline: clients must not retry
    return error_response(
        int(error.get("status_code", 500)),
        error.get("detail", "Internal error"),
        error.get("error_type"),
        headers,
    )


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats (which strict JSON cannot carry) spelled as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def error_text(error: dict[str, Any]) -> str:
    """One line that says why a job failed: the detail text, or each validation item as ``field: msg``."""
    detail = error.get("detail")
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and detail:
        parts = []
        for item in detail:
            loc = [str(p) for p in item.get("loc", []) if p != "body"] if isinstance(item, dict) else []
            msg = item.get("msg", "") if isinstance(item, dict) else str(item)
            parts.append(f"{'.'.join(loc)}: {msg}" if loc else str(msg))
        return "; ".join(parts)
    return f"Request failed with status code {error.get('status_code', 500)}"


def validation_detail(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic errors -> fal's detail list (JSON-safe: ctx values become strings, NaN / Infinity too)."""
    out = []
    for err in errors:
        item: dict[str, Any] = {
            "loc": list(err.get("loc", [])),
            "msg": err.get("msg", ""),
            "type": err.get("type"),
        }
        if "input" in err:
            item["input"] = json_safe(err["input"])
        if err.get("ctx"):
            item["ctx"] = {
                k: json_safe(v) if isinstance(v, int | float | str | bool) else str(v) for k, v in err["ctx"].items()
            }
        out.append(item)
    return out


async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = validation_detail(list(exc.errors()))
    return JSONResponse(jsonable_encoder({"detail": detail}), status_code=422)


async def on_fal_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FalError)
    return error_response(exc.status_code, exc.detail, exc.error_type, exc.headers)


async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
        exc.status_code, "http_error"
    )
    return error_response(exc.status_code, str(exc.detail), error_type, dict(exc.headers or {}))


STORE_RETRY_AFTER_S = 1


async def on_store_unavailable(_: Request, exc: Exception) -> JSONResponse:
    """The job store's database is briefly unreachable (a restart, a failover): the client retries."""
    logging.getLogger("fal_onprem.api").warning("job store unavailable: %s", exc)
    return error_response(
        503,
        "The job store is unavailable; retry the request",
        "store_unavailable",
        {"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


async def on_unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    """A bug still answers fal-style JSON (never Starlette's plain-text 500); the traceback goes to the log."""
    return error_response(500, f"Internal server error ({type(exc).__name__})", "internal_server_error")
