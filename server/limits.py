"""Request body caps, answered with a fal-style 413 before any route (or auth check) reads the body.

Submit and run bodies may be up to ``max_request_bytes`` (inputs can be data URIs); every other body
(upload initiation, tokens, multipart completion lists) is a small JSON control message. The upload
data routes stream to disk with their own, larger limit and are not buffered here.
"""

from __future__ import annotations

import re

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_response

CONTROL_MAX_BYTES = 1024 * 1024
UPLOAD_DATA_ROUTES = re.compile(
    r"^(PUT /storage/uploads/[^/]+(/\d+)?|POST /cdn/files/upload|PUT /files/.+/multipart/[^/]+/\d+)$"
)


def body_limit(method: str, path: str, max_request_bytes: int) -> int | None:
    """The cap for a request's body, or None for bodiless methods and the upload data routes."""
    if method not in ("POST", "PUT", "PATCH") or UPLOAD_DATA_ROUTES.match(f"{method} {path}"):
        return None
    return max_request_bytes if path.startswith(("/queue/", "/run/")) else CONTROL_MAX_BYTES


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = body_limit(scope["method"], scope["path"], self.max_bytes) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return

        def too_large() -> Response:
            return error_response(413, f"Request body is larger than the limit of {limit} bytes", "request_too_large")

        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await too_large()(scope, receive, send)
            return
        # Read (at most the cap) before the app sees anything, then replay the body to it.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await too_large()(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
