"""Absolute URLs of responses: the configured public URL, else the request's own base URL."""

from __future__ import annotations

from fastapi import Request


def base_url(request: Request) -> str:
    public = request.app.state.settings.public_url
    return (public or str(request.base_url)).rstrip("/")


def request_urls(base: str, app: str, request_id: str) -> dict[str, str]:
    root = f"{base}/queue/{app}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}
