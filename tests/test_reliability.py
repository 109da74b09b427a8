"""Regression tests of issue #11 (reliability under faults and hostile input), one per defect, in-process."""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage

from pipelines import registry
from pipelines.common.image_io import ImageDecodeError, decode_image
from server.app import create_app
from server.config import Settings
from server.jobs import fail_unservable, status_body
from server.store import Job, JobStore, PipelineState, SQLiteJobStore
from server.worker.host_memory import held_bytes
from server.worker.runner import Loaded, Worker
from tests.support.echo_pipeline import ENDPOINT as ECHO_ENDPOINT
from tests.support.echo_pipeline import EchoPipeline
from tests.support.live_server import LiveServer
from tests.support.server_fixtures import png_data_uri, wait_completed


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path)))


# -- 3. non-finite numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_a_json_422_naming_the_field(client: TestClient, literal: str) -> None:
    body = '{"image_url": "data:image/png;base64,AA==", "blink": ' + literal + "}"
    r = client.post("/queue/fal-ai/live-portrait/image", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail[0]["loc"] == ["body", "blink"] and detail[0]["type"] == "finite_number"
    # a NaN in a field that wants a string is echoed back as text, not as an unserialisable float
    r = client.post(
        "/queue/fal-ai/dwpose", content='{"image_url": ' + literal + "}", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image_url"]


def test_every_float_field_of_every_endpoint_refuses_non_finite_values() -> None:
    for spec in registry.endpoints().values():
        model = spec.input_model
        if model.__module__.startswith("tests."):
            continue
        assert model.model_config.get("allow_inf_nan") is False, spec.endpoint_id


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300", "0.5"])
def test_start_timeout_header_refuses_nan_inf_and_absurd_values(client: TestClient, value: str) -> None:
    r = client.post(
        "/queue/fal-ai/dwpose",
        json={"image_url": "data:image/png;base64,AA=="},
        headers={"X-Fal-Request-Timeout": value},
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["header", "x-fal-request-timeout"]


def test_an_unexpected_exception_still_answers_json(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("bug")

    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert r.status_code == 500 and r.json()["error_type"] == "internal_server_error"


# -- 4. degenerate image sizes ---------------------------------------------------------------------------


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, (90, 120, 150)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("size", [(3000, 1), (1, 4000), (7, 500)])
def test_degenerate_image_sizes_are_refused_by_decoding(size: tuple[int, int]) -> None:
    with pytest.raises(ImageDecodeError) as err:
        decode_image(_png(size))
    assert err.value.error_type == "image_too_small" and f"{size[0]}x{size[1]}" in str(err.value)


def test_pil_internals_do_not_leak_into_image_errors() -> None:
    with pytest.raises(ImageDecodeError) as err:
        decode_image(b"\x00" * 64)
    assert "BytesIO" not in str(err.value) and "JPEG, PNG or WEBP" in str(err.value)


@pytest.mark.parametrize("size", [(40000, 16), (16, 40000), (10240, 8), (10240, 64)])
def test_liveportrait_elongated_images_are_a_422_on_image_url(size: tuple[int, int]) -> None:
    from pipelines.contract import ItemError, WeightSource
    from pipelines.liveportrait.pipeline import LivePortraitPipeline
    from pipelines.liveportrait.schema import LivePortraitImageInput

    pipe = LivePortraitPipeline.load(WeightSource.tiny(seed=0))
    strip = PILImage.new("RGB", size, (90, 120, 150))
    inp = LivePortraitImageInput(image_url="https://x/strip.png", enable_safety_checker=False, flag_do_crop=False)
    try:
        pipe.prepare(inp, lambda url, loc: strip)
    except ItemError as exc:  # never an OpenCV assertion (500)
        assert exc.status_code == 422 and exc.detail[0]["loc"] == ["body", "image_url"]
    else:
        assert min(size) * 1280 // max(size) >= 8  # a usable working copy: it may run


# -- 7. upload content types -----------------------------------------------------------------------------


@pytest.mark.parametrize("ctype", ["image/png\r\nX-Evil: 1", "not a type", "image/png; x=\x01", "a" * 300 + "/b"])
def test_upload_content_type_must_be_a_mime_type(client: TestClient, ctype: str) -> None:
    r = client.post("/rest/storage/upload/initiate", json={"content_type": ctype, "file_name": "a.png"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "content_type"]


def test_stored_files_are_served_nosniff_with_their_valid_type(client: TestClient) -> None:
    r = client.post("/rest/storage/upload/initiate", json={"content_type": "image/png; q=1", "file_name": "a.png"})
    assert r.status_code == 200, r.text
    urls = r.json()
    assert client.put(urls["upload_url"].split("testserver", 1)[1], content=_png((16, 16))).status_code == 200
    got = client.get(urls["file_url"].split("testserver", 1)[1])
    assert got.status_code == 200 and got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-type"] == "image/png; q=1"


# -- 9. why a job failed ---------------------------------------------------------------------------------


def _worker(tmp_path: Path, **settings: object) -> Worker:
    """An in-process worker serving the test/echo pipeline (no registry, no model library)."""
    worker = Worker(Settings(data_dir=tmp_path, **settings))
    worker.loaded["test/echo"] = Loaded("test/echo", EchoPipeline(), max_batch=8, max_wait_ms=0)
    return worker


def _queue(store: JobStore, inp: dict, n: int = 1) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for job_id in ids:
        store.create(Job(id=job_id, endpoint="test/echo", input=inp))
    return ids


def test_a_failed_job_logs_one_line_and_its_status_says_the_real_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = _worker(tmp_path)
    (job_id,) = _queue(worker.store, {"image_url": "data:image/png;base64,AA=="})
    with caplog.at_level(logging.WARNING, logger="fal_onprem.worker"):
        batch = worker.claim_next()
        assert batch is not None
        worker.run_batch(batch)
    lines = [r.getMessage() for r in caplog.records if job_id in r.getMessage()]
    assert len(lines) == 1 and "test/echo" in lines[0] and "422" in lines[0] and "image_url" in lines[0]
    job = worker.store.get(job_id)
    assert job is not None
    body = status_body(worker.store, job, "http://x", None)
    assert body["error"].startswith("image_url: ") and "Invalid status code" not in body["error"]
    assert "not a JPEG, PNG or WEBP" in body["error"]


# -- 5 (release_dead_worker) and 10 (retention, counters) are store tests: tests/test_store.py, both stores


# -- 2. queued jobs of an endpoint no worker can serve ---------------------------------------------------


def test_queued_jobs_fail_with_503_when_no_live_worker_can_serve_their_endpoint(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, no_worker_grace_s=60)
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    endpoints = {"test/echo": ECHO_ENDPOINT}
    (loading_job,) = _queue(store, {"image_url": "x"})
    store.set_pipeline_state(PipelineState("test/echo", "w1", "loading"))
    assert fail_unservable(store, endpoints, settings, api_started=0.0) == {}  # still loading: it waits

    store.set_pipeline_state(
        PipelineState("test/echo", "w1", "failed", "weights missing: run `fal-onprem weights pull`")
    )
    assert fail_unservable(store, endpoints, settings, api_started=0.0) == {"test/echo": [loading_job]}
    job = store.get(loading_job)
    assert job is not None and job.status == "COMPLETED" and job.error is not None
    assert job.error["status_code"] == 503 and "weights pull" in job.error["detail"]

    # a worker that becomes ready serves new jobs normally
    store.set_pipeline_state(PipelineState("test/echo", "w1", "ready"))
    (later,) = _queue(store, {"image_url": "x"})
    assert fail_unservable(store, endpoints, settings, api_started=0.0) == {}

    # no worker reporting at all: only after the grace period (from the API's start or the last report)
    store.clear_pipeline_states("w1")
    assert fail_unservable(store, endpoints, settings, api_started=time.time()) == {}
    assert fail_unservable(store, endpoints, settings, api_started=time.time() - 61) == {"test/echo": [later]}


def test_a_job_submitted_before_its_pipeline_fails_to_load_completes_with_the_503(tmp_path: Path) -> None:
    """Live: a dwpose job is already queued when a worker without weights starts; it must not hang."""
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    (job_id,) = (str(uuid.uuid4()),)
    store.create(Job(id=job_id, endpoint="fal-ai/dwpose", input={"image_url": "data:image/png;base64,AA=="}))
    weights = tmp_path / "weights"
    weights.mkdir()
    server = LiveServer(
        tmp_path,
        tiny=False,
        extra_args=["--weights-dir", str(weights)],
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
        wait_for=("fal-ai/dwpose",),
    )
    server.start()
    try:
        status = wait_completed(f"{server.url}/queue/fal-ai/dwpose/requests/{job_id}/status", timeout=60)
        assert status["error_type"] == "pipeline_unavailable" and "weights pull" in status["error"]
        r = httpx.get(f"{server.url}/queue/fal-ai/dwpose/requests/{job_id}")
        assert r.status_code == 503 and "weights pull" in r.json()["detail"]
    finally:
        server.stop()


# -- 1. worker memory bounded in bytes ---------------------------------------------------------------------


BIG = (4000, 3000)  # 36 MB decoded: large enough to see, small enough for a test


def test_dwpose_prepare_keeps_only_its_working_image() -> None:
    from pipelines.contract import WeightSource
    from pipelines.dwpose.pipeline import DWPosePipeline
    from pipelines.dwpose.schema import DWPoseInput

    big = PILImage.new("RGB", BIG, (90, 120, 150))
    prepared = DWPosePipeline.load(WeightSource.tiny(seed=0)).prepare(
        DWPoseInput(image_url="https://x/big.png"), lambda url, loc: big
    )
    assert "image_url" not in prepared.images
    assert held_bytes(prepared) < held_bytes(big) / 4  # the 512 px image and the 640x640 detector input


def test_liveportrait_prepare_keeps_only_its_1280_copy() -> None:
    from pipelines.contract import WeightSource
    from pipelines.liveportrait.pipeline import LivePortraitPipeline
    from pipelines.liveportrait.schema import LivePortraitImageInput

    big = PILImage.new("RGB", BIG, (90, 120, 150))
    inp = LivePortraitImageInput(image_url="https://x/big.png", enable_safety_checker=False, flag_do_crop=False)
    prepared = LivePortraitPipeline.load(WeightSource.tiny(seed=0)).prepare(inp, lambda url, loc: big)
    assert "image_url" not in prepared.images
    assert held_bytes(prepared) < held_bytes(big) / 4


def test_worker_bounds_prepared_inputs_in_bytes(tmp_path: Path) -> None:
    one = 48 * 40 * 3  # png_data_uri's image, decoded
    worker = _worker(tmp_path, max_prepared_bytes=2 * one + one // 2)
    ids = _queue(worker.store, {"image_url": png_data_uri()}, n=8)
    first = worker.claim_next()
    assert first is not None and [j.id for j in first.jobs] == ids[:2]  # count allows 8, bytes allow 2
    for job_id in ids[2:]:  # the rest went back to the queue, no attempt spent
        job = worker.store.get(job_id)
        assert job is not None and (job.status, job.attempts, job.worker_id) == ("IN_QUEUE", 0, None)
    prefetched = worker.claim_next()  # while the first batch is held: room for one job only (never none)
    assert prefetched is not None and len(prefetched.jobs) == 1
    worker.run_batch(first)
    worker.run_batch(prefetched)
    after = worker.claim_next()  # both batches released their bytes
    assert after is not None and len(after.jobs) == 2


# -- 8. operational routes with keys configured ----------------------------------------------------------


def test_with_keys_ops_details_need_a_key_and_liveness_stays_open(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(data_dir=tmp_path, api_keys="ops-key")))
    store = client.app.state.store  # type: ignore[attr-defined]
    store.set_pipeline_state(PipelineState("fal-ai/dwpose", "gpu-host-7:4242:cuda:0", "failed", "secret reason"))
    assert client.get("/healthz").status_code == 200
    anonymous = client.get("/readyz")
    assert anonymous.json() == {"ready": False}  # the status a load balancer needs, no host, pid or reason
    assert "gpu-host-7" not in anonymous.text and "secret reason" not in anonymous.text
    assert client.get("/metrics").status_code == 401
    key = {"Authorization": "Key ops-key"}
    detailed = client.get("/readyz", headers=key).json()
    assert detailed["pipelines"]["fal-ai/dwpose"]["workers"][0]["worker"] == "gpu-host-7:4242:cuda:0"
    metrics = client.get("/metrics", headers={"Authorization": "Bearer ops-key"})
    assert metrics.status_code == 200 and "fal_onprem_queue_depth" in metrics.text


def test_without_keys_ops_routes_stay_open(client: TestClient) -> None:
    assert "pipelines" in client.get("/readyz").json()
    assert client.get("/metrics").status_code == 200


# -- lower priority: a missing file under our own /files/ URL ----------------------------------------------


def test_a_missing_file_of_ours_is_named_as_such_not_as_a_refused_loopback(tmp_path: Path) -> None:
    from pipelines.contract import ItemError
    from server.files import FileStore
    from server.worker.inputs import make_image_loader

    settings = Settings(data_dir=tmp_path, public_url="https://fal.example.com")
    load = make_image_loader(settings, FileStore(settings.files_dir))
    for url in (
        "http://127.0.0.1:8000/files/abcdefghijklmnopqrstuv/a.png",
        "https://fal.example.com/files/abcdefghijklmnopqrstuv/a.png",
    ):
        with pytest.raises(ItemError) as err:
            load(url, ["image_url"])
        assert (
            "no such file on this server" in err.value.detail[0]["msg"] and "loopback" not in err.value.detail[0]["msg"]
        )


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_rgb_array_in_strips_equals_numpy_conversion(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    from pipelines.common import image_io

    monkeypatch.setattr(image_io, "ARRAY_STRIP_BYTES", 1000)  # many strips, a short last one
    rng = np.random.default_rng(0)
    image = PILImage.fromarray(rng.integers(0, 255, (37, 51, 3), dtype=np.uint8)).convert(mode)
    np.testing.assert_array_equal(image_io.rgb_array(image), np.asarray(image.convert("RGB")))


# -- the database restarting under a worker and the API --------------------------------------------------


def _wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_postgres_restart_costs_time_not_the_worker_nor_its_job(
    tmp_path: Path, postgres_server, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL goes down while the worker runs a job: the worker's store calls wait it out (no crash, no
    second attempt), and the API answers a JSON 503 with Retry-After meanwhile (not a 500)."""
    url = postgres_server.create_database()
    worker = _worker(tmp_path / "worker", store_url=url)
    (job_id,) = _queue(worker.store, {"image_url": png_data_uri(size=(8, 8)), "steps": 1, "step_ms": 3000})
    serving = threading.Thread(target=worker.serve_forever, daemon=True)
    app = create_app(Settings(data_dir=tmp_path / "api", store_url=url))
    with TestClient(app) as client, caplog.at_level(logging.WARNING, logger="fal_onprem.store"):
        serving.start()
        try:
            _wait_until(lambda: worker.store.get(job_id).status == "IN_PROGRESS")
            postgres_server.stop()
            try:
                r = client.get(f"/queue/test/echo/requests/{job_id}/status")
                assert r.status_code == 503 and r.json()["error_type"] == "store_unavailable"
                assert r.headers["retry-after"] == "1"
                # the job finished meanwhile: its worker retries writing (its log lines, then its result)
                _wait_until(
                    lambda: any(rec.getMessage().startswith("job store unavailable in") for rec in caplog.records)
                )
            finally:
                postgres_server.start()
            _wait_until(lambda: worker.store.get(job_id).status == "COMPLETED")
            assert serving.is_alive()
        finally:
            worker.stop()
            serving.join(30)
        job = worker.store.get(job_id)
        assert job is not None and job.error is None and job.result is not None and job.attempts == 1
        assert client.get(f"/queue/test/echo/requests/{job_id}").status_code == 200


# -- job log lines: buffered while a batch is young, never held back from a long one ---------------------


def test_a_fast_batch_writes_its_lines_with_its_result_and_a_silent_one_still_shows_them(tmp_path: Path) -> None:
    worker = _worker(tmp_path, job_lease_s=3)  # housekeeping runs every second
    fast, slow = _queue(worker.store, {"image_url": png_data_uri(size=(8, 8))}, 1) + _queue(
        worker.store, {"image_url": png_data_uri(size=(8, 8)), "steps": 1, "step_ms": 4000}, 1
    )
    batch = worker.claim_next()
    assert batch is not None and [j.id for j in batch.jobs] == [fast]  # one batch key per job: steps differ
    worker.run_batch(batch)
    lines = [e.message for e in worker.store.logs(fast)]
    assert lines[0].startswith("Running test/echo") and lines[-1] == "tinted item 0"

    serving = threading.Thread(target=worker.serve_forever, daemon=True)
    serving.start()
    try:
        # the slow job logs "Running ..." at once, then nothing for 4 s: housekeeping writes the line
        _wait_until(lambda: bool(worker.store.logs(slow)), timeout=30)
        job = worker.store.get(slow)
        assert job is not None and job.status == "IN_PROGRESS"
        assert worker.store.logs(slow)[0].message.startswith("Running test/echo")
    finally:
        worker.stop()
        serving.join(30)
