"""API keys: requests need a configured key, and jobs are scoped to the key that made them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.live_server import REPO, LiveServer
from tests.support.server_fixtures import png_data_uri, wait_completed


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("auth"), env={"FAL_ONPREM_API_KEYS": "key-a,key-b"})
    server.start()
    yield server
    server.stop()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Key {key}"}


def test_missing_or_wrong_key_is_401(keyed_server: LiveServer) -> None:
    body = {"image_url": png_data_uri()}
    r = httpx.post(f"{keyed_server.url}/queue/test/echo", json=body)
    assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
    r = httpx.post(f"{keyed_server.url}/queue/test/echo", json=body, headers=auth("nope"))
    assert r.status_code == 401


def test_jobs_are_scoped_to_their_key(keyed_server: LiveServer) -> None:
    sub = httpx.post(f"{keyed_server.url}/queue/test/echo", json={"image_url": png_data_uri()}, headers=auth("key-a"))
    assert sub.status_code == 200
    urls = sub.json()
    for url in (urls["status_url"], urls["response_url"]):
        assert httpx.get(url, headers=auth("key-b")).status_code == 404
    assert httpx.put(urls["cancel_url"], headers=auth("key-b")).status_code == 404
    wait_completed(urls["status_url"], headers=auth("key-a"))
    assert httpx.get(urls["response_url"], headers=auth("key-a")).json()["seed"] >= 0


def test_open_routes_need_no_key(keyed_server: LiveServer) -> None:
    assert httpx.get(f"{keyed_server.url}/healthz").status_code == 200
    assert httpx.get(f"{keyed_server.url}/openapi.json").status_code == 200


def test_refuses_non_loopback_bind_without_keys(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--insecure-no-auth" in proc.stderr
