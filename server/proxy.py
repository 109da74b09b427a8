"""The JS client's proxy protocol (fal-protocol.md §6.2, recipe J2).

``@fal-ai/client`` with ``proxyUrl`` sends every request to one URL with the original method and
body, naming the real target in ``x-fal-target-url``. This ASGI middleware rewrites such a request's
path to our own route for that target before routing, so proxied calls behave exactly like direct
ones (streams included).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import error_response

PROXY_PATH = "/api/fal/proxy"
HOST_PREFIXES = {
    "queue.fal.run": "/queue",
    "fal.run": "/run",
    "rest.fal.ai": "/rest",
    "rest.alpha.fal.ai": "/rest",
    "v3.fal.media": "/cdn",
}


def target_path(target_url: str) -> tuple[str, str] | None:
    """(path, query) of our route for a fal URL, or None when the host is not a fal host."""
    parts = urlsplit(target_url)
    host = (parts.hostname or "").lower()
    prefix = HOST_PREFIXES.get(host)
    if prefix is None:
        # Our own URLs (e.g. upload_url we handed out) pass through unchanged.
        if parts.path.startswith(("/queue/", "/run/", "/rest/", "/cdn/", "/files/", "/storage/")):
            return parts.path, parts.query
        return None
    return prefix + (parts.path or "/"), parts.query


class FalProxyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # CORS preflights carry no x-fal-target-url: the CORS layer answers them.
        if scope["type"] != "http" or scope["path"].rstrip("/") != PROXY_PATH or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        target = headers.get("x-fal-target-url")
        routed = target_path(target) if target else None
        if routed is None:
            msg = "x-fal-target-url is missing" if not target else f"x-fal-target-url {target!r} is not a fal URL"
            await error_response(400, msg, "invalid_proxy_target")(scope, receive, send)
            return
        path, query = routed
        scope = dict(scope, path=path, raw_path=path.encode(), query_string=query.encode())
        await self.app(scope, receive, send)
