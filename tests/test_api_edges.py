"""In-process API checks (no worker): body caps on every JSON route, CORS through the proxy,
disabled pipelines, cancel of unknown ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import PipelineSettings, Settings


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = Settings(
        data_dir=tmp_path,
        max_request_bytes=64 * 1024,
        pipelines={"fal-ai/dwpose": PipelineSettings(enabled=False)},
    )
    return TestClient(create_app(settings))


def test_every_json_route_caps_its_body_before_auth_or_signature_checks(client: TestClient) -> None:
    big = json.dumps({"x": "a" * (2 * 1024 * 1024)})
    for path in (
        "/rest/storage/upload/initiate",
        "/rest/storage/auth/token",
        "/storage/uploads/abcdefghijklmnopqrst/complete",
        "/files/abcdefghijklmnopqrstuv/a.bin/multipart/abcdefghijklmnopqrst/complete",
    ):
        r = client.post(path, content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413, (path, r.status_code)
        assert r.json()["error_type"] == "request_too_large"
    r = client.post("/queue/test/x", content=json.dumps({"x": "a" * 100_000}))
    assert r.status_code == 413  # submit: max_request_bytes


def test_proxy_answers_cors_preflight_and_errors_carry_cors(client: TestClient) -> None:
    origin = {"Origin": "http://app.example"}
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-fal-target-url"}
    pre = client.options("/api/fal/proxy", headers={**origin, **preflight})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] in ("*", "http://app.example")
    missing = client.post("/api/fal/proxy", headers=origin)
    assert missing.status_code == 400 and "access-control-allow-origin" in missing.headers


def test_disabled_pipeline_answers_503(client: TestClient) -> None:
    r = client.post("/queue/fal-ai/dwpose", json={"image_url": "data:image/png;base64,AA=="})
    assert r.status_code == 503
    assert r.json()["error_type"] == "pipeline_unavailable" and "disabled" in r.json()["detail"]


def test_cancel_of_an_unknown_request_says_not_found(client: TestClient) -> None:
    r = client.put("/queue/fal-ai/dwpose/requests/00000000-0000-0000-0000-000000000000/cancel")
    assert r.status_code == 404 and r.json() == {"status": "NOT_FOUND"}
