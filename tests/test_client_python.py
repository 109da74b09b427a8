"""The real PyPI ``fal-client`` against a live server (recipe P2: module constants, plain http)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import fal_client
import httpx
import pytest

from tests.support.live_server import LiveServer
from tests.support.server_fixtures import fetch_bytes, png_data_uri, python_client, wait_status

APP = "test/echo"


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[fal_client.SyncClient]:
    with python_client(live_server.url) as c:
        yield c


def echo_args(**extra: object) -> dict:
    return {"image_url": png_data_uri(), "seed": 7, **extra}


def test_subscribe_with_logs(client: fal_client.SyncClient) -> None:
    updates: list[object] = []
    result = client.subscribe(
        APP, arguments=echo_args(steps=4, step_ms=150), with_logs=True, on_queue_update=updates.append
    )
    assert result["seed"] == 7
    assert result["image"]["content_type"] == "image/png"
    assert (result["image"]["width"], result["image"]["height"]) == (64, 64)
    assert fetch_bytes(result["image"]["url"]).startswith(b"\x89PNG")
    in_progress = [u for u in updates if isinstance(u, fal_client.InProgress)]
    assert in_progress, updates
    messages = [entry["message"] for u in in_progress for entry in u.logs]
    assert any(m.startswith("Step ") for m in messages)
    assert isinstance(updates[-1], fal_client.Completed)
    assert updates[-1].metrics["inference_time"] > 0


def test_submit_status_result_and_by_id(client: fal_client.SyncClient) -> None:
    handle = client.submit(APP, arguments=echo_args())
    status = handle.status(with_logs=True)
    assert isinstance(status, fal_client.Queued | fal_client.InProgress | fal_client.Completed)
    result = handle.get()
    assert result["seed"] == 7
    # by id: the client builds owner/alias URLs itself
    by_id = client.get_handle(APP, handle.request_id)
    assert isinstance(by_id.status(with_logs=False), fal_client.Completed)
    assert by_id.get() == result


def test_run(client: fal_client.SyncClient) -> None:
    result = client.run(APP, arguments=echo_args(seed=11, output_format="jpeg"))
    assert result["seed"] == 11
    assert result["image"]["content_type"] == "image/jpeg"
    assert fetch_bytes(result["image"]["url"]).startswith(b"\xff\xd8")


def test_sync_mode_returns_data_uri(client: fal_client.SyncClient) -> None:
    result = client.run(APP, arguments=echo_args(sync_mode=True))
    assert result["image"]["url"].startswith("data:image/png;base64,")
    assert len(fetch_bytes(result["image"]["url"])) == result["image"]["file_size"]


def test_cancel_running_job(client: fal_client.SyncClient, live_server: LiveServer) -> None:
    handle = client.submit(APP, arguments=echo_args(steps=100, step_ms=100))
    wait_status(f"{live_server.url}/queue/{APP}/requests/{handle.request_id}/status", "IN_PROGRESS")
    started = time.monotonic()
    handle.cancel()
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        handle.get()
    assert time.monotonic() - started < 5.0  # stopped at a step boundary, not after 10 s of steps
    assert err.value.status_code == 400
    assert "cancelled" in str(err.value).lower()
    with pytest.raises(fal_client.FalClientHTTPError) as again:
        handle.cancel()
    assert again.value.status_code == 400
    assert "ALREADY_COMPLETED" in str(again.value)


def test_cancel_queued_job(client: fal_client.SyncClient, live_server: LiveServer) -> None:
    blocker = client.submit(APP, arguments=echo_args(steps=30, step_ms=100))
    wait_status(f"{live_server.url}/queue/{APP}/requests/{blocker.request_id}/status", "IN_PROGRESS")
    queued = client.submit(APP, arguments=echo_args(steps=2))  # other batch key: cannot join the blocker
    status = queued.status()
    assert isinstance(status, fal_client.Queued)
    queued.cancel()
    assert isinstance(queued.status(), fal_client.Completed)
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        queued.get()
    assert err.value.status_code == 400
    blocker.cancel()


def test_invalid_input_is_422_at_submit(client: fal_client.SyncClient) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        client.submit(APP, arguments={"seed": 1})
    assert err.value.status_code == 422
    detail = err.value.message
    assert isinstance(detail, list) and detail[0]["loc"] == ["body", "image_url"]


def test_failed_job_surfaces_on_result(client: fal_client.SyncClient) -> None:
    handle = client.submit(APP, arguments=echo_args(fail="item"))
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        handle.get()
    assert err.value.status_code == 422
    assert err.value.message[0]["type"] == "echo_refused"
    with pytest.raises(fal_client.FalClientHTTPError) as crash:
        client.run(APP, arguments=echo_args(fail="crash"))
    assert crash.value.status_code == 500
    assert crash.value.error_type == "internal_server_error"


def test_unknown_request_and_endpoint(live_server: LiveServer) -> None:
    r = httpx.get(f"{live_server.url}/queue/{APP}/requests/00000000-0000-0000-0000-000000000000/status")
    assert r.status_code == 404 and r.json()["error_type"] == "request_not_found"
    r = httpx.post(f"{live_server.url}/queue/nobody/nothing", json={})
    assert r.status_code == 404


def test_not_yet_built_pipeline_answers_503(live_server: LiveServer) -> None:
    body = {"image_url": png_data_uri()}
    r = httpx.post(f"{live_server.url}/queue/test/unbuilt", json=body)
    assert r.status_code == 503
    assert "not implemented" in r.json()["detail"]
    bad = httpx.post(f"{live_server.url}/queue/test/unbuilt", json={**body, "output_format": "gif"})
    assert bad.status_code == 422  # validated even though the model is not built


def test_start_timeout_expires_a_queued_job(client: fal_client.SyncClient, live_server: LiveServer) -> None:
    blocker = client.submit(APP, arguments=echo_args(steps=30, step_ms=100))
    wait_status(f"{live_server.url}/queue/{APP}/requests/{blocker.request_id}/status", "IN_PROGRESS")
    late = client.submit(APP, arguments=echo_args(steps=3), start_timeout=1.5)  # sends X-Fal-Request-Timeout
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        late.get()
    assert err.value.status_code == 504
    assert err.value.error_type == "request_timeout"
    assert err.value.response_headers["x-fal-request-timeout-type"] == "user"  # clients do not retry
    assert isinstance(blocker.status(), fal_client.InProgress)  # expired while the worker was busy
    blocker.cancel()


def test_normal_priority_runs_before_low(client: fal_client.SyncClient, live_server: LiveServer) -> None:
    blocker = client.submit(APP, arguments=echo_args(steps=10, step_ms=100))
    wait_status(f"{live_server.url}/queue/{APP}/requests/{blocker.request_id}/status", "IN_PROGRESS")
    low = client.submit(APP, arguments=echo_args(steps=4), priority="low")
    normal = client.submit(APP, arguments=echo_args(steps=5), priority="normal")
    assert low.status().position == 1 and normal.status().position == 0
    blocker.cancel()
    low.get()
    normal.get()
    low_status = httpx.get(f"{live_server.url}/queue/{APP}/requests/{low.request_id}/status").json()
    normal_status = httpx.get(f"{live_server.url}/queue/{APP}/requests/{normal.request_id}/status").json()
    # the low-priority job waited for the normal one (different batch keys, so two batches)
    assert low_status["metrics"]["queue_time"] > normal_status["metrics"]["queue_time"]


def test_status_stream_sends_log_lines_as_they_come(client: fal_client.SyncClient, live_server: LiveServer) -> None:
    """SSE: new log lines are sent while the job runs (not held back until COMPLETED), each line once."""
    handle = client.submit(APP, arguments=echo_args(steps=8, step_ms=150))
    url = f"{live_server.url}/queue/{APP}/requests/{handle.request_id}/status/stream"
    events = []
    with httpx.stream("GET", url, params={"logs": "1"}, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    assert events[-1]["status"] == "COMPLETED"
    running = [e for e in events if e["status"] == "IN_PROGRESS" and e["logs"]]
    assert len(running) >= 3, events  # progress arrives step by step
    steps = [entry["message"] for e in events for entry in (e["logs"] or []) if entry["message"].startswith("Step ")]
    assert steps == [f"Step {i}/8" for i in range(1, 9)]
