"""API keys: ``Authorization: Key <key>``. Jobs are scoped to the key that made them.

With no keys configured every caller is anonymous (key id None) and sees every job; the CLI
refuses to bind such a server to a non-loopback address unless told ``--insecure-no-auth``.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from server.errors import FalError

KEY_ID_SECRET_FILE = "key_id.key"


def key_id(request: Request, key: str) -> str:
    """A stable id for a key, stored with each job and sent as the webhook user id. It is an HMAC
    with a per-data-dir secret, so whoever sees it cannot test guesses of the key offline."""
    secret: bytes = request.app.state.key_id_secret
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:16]


async def caller_key_id(request: Request) -> str | None:
    """FastAPI dependency (async: it runs on the event loop, not in a thread of its own)."""
    return request_key_id(request)


def request_key_id(request: Request) -> str | None:
    """The caller's key id, or None when auth is off. 401 on a bad key."""
    keys: list[str] = request.app.state.settings.key_list
    if not keys:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() in ("key", "bearer") and token:
        for key in keys:
            if hmac.compare_digest(token.encode(), key.encode()):
                return key_id(request, key)
    raise FalError(401, "Missing or invalid API key (expected 'Authorization: Key <key>')", "unauthorized")
