"""Fixtures and helpers for tests that need a live server (a pytest plugin named in conftest.py)."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.live_server import LiveServer


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One ``serve --tiny`` (with the test/echo pipeline) shared by a test module."""
    server = LiveServer(tmp_path_factory.mktemp("server"))
    server.start()
    yield server
    server.stop()


def serve_endpoint(
    tmp_path_factory: pytest.TempPathFactory, app: str, env: dict[str, str] | None = None
) -> Iterator[LiveServer]:
    """A test module's ``serve --tiny``, ready once ``app`` is (``yield from`` it in a ``server`` fixture)."""
    live = LiveServer(tmp_path_factory.mktemp(app.rsplit("/", 1)[-1]), wait_for=(app,), env=env)
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[object]:
    """The real ``fal_client`` against the test module's own ``server`` fixture."""
    with python_client(server.url) as c:
        yield c


@contextmanager
def python_client(base_url: str, key: str = "local-dummy") -> Iterator[object]:
    """The real ``fal_client`` pointed at ``base_url`` with the README's recipe P2 (module constants)."""
    import fal_client
    import fal_client.client as fc

    names = ("RUN_URL_FORMAT", "QUEUE_URL_FORMAT", "REST_URL", "CDN_URL")
    saved = {name: getattr(fc, name) for name in names}
    fc.RUN_URL_FORMAT = f"{base_url}/run/"
    fc.QUEUE_URL_FORMAT = f"{base_url}/queue/"
    fc.REST_URL = f"{base_url}/rest"
    fc.CDN_URL = f"{base_url}/cdn"
    try:
        yield fal_client.SyncClient(key=key)
    finally:
        for name, value in saved.items():
            setattr(fc, name, value)


def png_data_uri(color: tuple[int, int, int] = (200, 100, 50), size: tuple[int, int] = (48, 40)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def jpeg_data_uri(array: np.ndarray, quality: int = 92) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def wait_status(url: str, status: str, timeout: float = 30.0, headers: dict[str, str] | None = None) -> dict:
    """Poll a status URL until it reports ``status`` (bounded)."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = httpx.get(url, params={"logs": "1"}, headers=headers, timeout=10).json()
        if body.get("status") == status:
            return body
        time.sleep(0.05)
    raise TimeoutError(f"{url} never reached {status}: {body}")


def wait_completed(status_url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> dict:
    return wait_status(status_url, "COMPLETED", timeout, headers)


def fetch_bytes(url: str) -> bytes:
    if url.startswith("data:"):
        return base64.b64decode(url.split(",", 1)[1])
    r = httpx.get(url, timeout=10)
    r.raise_for_status()
    return r.content
