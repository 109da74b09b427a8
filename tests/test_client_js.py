"""The real npm ``@fal-ai/client`` (driven with node) against a live server, recipes J1 and J2."""

from __future__ import annotations

import pytest

from tests.support.js import ok, requires_js_client, run_node_report
from tests.support.live_server import LiveServer
from tests.support.server_fixtures import fetch_bytes, png_data_uri

APP = "test/echo"
pytestmark = requires_js_client


@pytest.fixture(scope="module", params=["middleware", "proxy"])
def report(request: pytest.FixtureRequest, live_server: LiveServer) -> dict:
    return run_node_report("scenarios.mjs", [live_server.url, request.param, APP], {"TEST_IMAGE_URI": png_data_uri()})


def test_subscribe_polling_with_logs(report: dict) -> None:
    r = ok(report, "subscribe_polling")
    assert r["data"]["seed"] == 5
    assert fetch_bytes(r["data"]["image"]["url"]).startswith(b"\x89PNG")
    assert r["requestId"]
    assert "IN_PROGRESS" in r["statuses"] and r["statuses"][-1] == "COMPLETED"
    assert any(entry["message"].startswith("Step ") for entry in r["logs"])


def test_subscribe_streaming_logs_not_duplicated(report: dict) -> None:
    r = ok(report, "subscribe_streaming")
    assert r["data"]["seed"] == 6
    assert r["statuses"][-1] == "COMPLETED"
    messages = [entry["message"] for entry in r["logs"]]
    assert [m for m in messages if m.startswith("Step ")] == ["Step 1/3", "Step 2/3", "Step 3/3"]


def test_submit_status_result(report: dict) -> None:
    r = ok(report, "submit_status_result")
    assert r["firstStatus"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    assert r["data"]["seed"] == 8
    assert r["requestId"] == r["request_id"]


def test_run(report: dict) -> None:
    r = ok(report, "run")
    assert r["data"]["seed"] == 9


def test_cancel_running(report: dict) -> None:
    r = ok(report, "cancel_running")
    assert r["elapsedMs"] < 5000
    assert r["resultError"]["kind"] == "ApiError" and r["resultError"]["status"] == 400


def test_cancel_queued(report: dict) -> None:
    r = ok(report, "cancel_queued")
    assert r["before"] == "IN_QUEUE" and r["queuePosition"] == 0
    assert r["after"] == "COMPLETED"
    assert r["second"]["kind"] == "ApiError" and r["second"]["body"] == {"status": "ALREADY_COMPLETED"}


def test_invalid_input_is_validation_error(report: dict) -> None:
    r = ok(report, "invalid_input")
    assert r["error"]["kind"] == "ValidationError" and r["error"]["status"] == 422
    assert r["error"]["fieldErrors"][0]["loc"] == ["body", "image_url"]


def test_failed_job_is_client_error(report: dict) -> None:
    r = ok(report, "failed_job")
    assert r["error"]["kind"] == "ValidationError" and r["error"]["status"] == 422
    assert r["error"]["requestId"]
