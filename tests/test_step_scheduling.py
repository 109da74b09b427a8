"""Step-level scheduling (issue 13): jobs join and leave a running stepwise batch at step boundaries.

An in-process worker drives the synthetic ``test/steps`` pipeline; each step waits on a semaphore the test
releases, and the pipeline logs the seeds of every step's rows, so the tests observe boundaries without
depending on timing.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage

from pipelines import registry
from server import jobs
from server.config import PipelineSettings, Settings
from server.metrics import render_metrics
from server.store import Job
from server.worker.runner import Worker
from tests.support.steps_pipeline import StepsPipeline

MODULES = "tests.support.steps_pipeline,tests.support.steps_pipeline_twin,tests.support.echo_pipeline"
ENDPOINT = "test/steps"
TWIN = "test/steps-twin"


def png_bytes() -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise TimeoutError(f"never happened: {what}")


class Harness:
    """A worker on its own thread plus helpers to submit jobs and release steps."""

    def __init__(self, tmp_path: Path, **overrides: object) -> None:
        others = {e: PipelineSettings(enabled=False) for e in registry.endpoints() if not e.startswith("test/")}
        self.settings = Settings(data_dir=tmp_path, weights_source="tiny", pipelines=others, **overrides)
        self.worker = Worker(self.settings, worker_id="w1")
        self.store = self.worker.store
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.worker.load_pipelines()
        self.serve()

    def serve(self) -> None:
        """Run the (already loaded) worker's loop on its own thread."""
        self.thread = threading.Thread(target=self.worker.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        if StepsPipeline.gate is not None:
            StepsPipeline.gate.release(1000)
        if self.thread is not None:
            self.thread.join(30)
            assert not self.thread.is_alive()

    def submit(self, endpoint: str = ENDPOINT, priority: str = "normal", **body: object) -> Job:
        spec = registry.get(endpoint)
        assert spec is not None
        inp = spec.input_model.model_validate({"sync_mode": True, **body})
        return jobs.submit(
            self.store, spec, inp, base="http://x", key_id=None, priority=priority, start_timeout=None, webhook_url=None
        )

    def job(self, job: Job) -> Job:
        current = self.store.get(job.id)
        assert current is not None
        return current

    def wait_done(self, *subs: Job, timeout: float = 30.0) -> list[Job]:
        wait_until(lambda: all(self.job(j).status == "COMPLETED" for j in subs), "jobs completed", timeout)
        return [self.job(j) for j in subs]

    def messages(self, job: Job) -> list[str]:
        return [e.message for e in self.store.logs(job.id)]

    def steps_started(self, n: int) -> None:
        wait_until(lambda: len(StepsPipeline.step_log) >= n, f"{n} steps started")

    def release(self, n: int = 1) -> None:
        assert StepsPipeline.gate is not None
        StepsPipeline.gate.release(n)


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    monkeypatch.setenv("FAL_ONPREM_PIPELINE_MODULES", MODULES)
    registry.endpoints.cache_clear()
    StepsPipeline.step_log = []
    StepsPipeline.gate = threading.Semaphore(0)
    h = Harness(tmp_path)
    yield h
    h.stop()
    StepsPipeline.gate = None
    registry.endpoints.cache_clear()


def images(job: Job) -> list[str]:
    assert job.error is None, job.error
    assert job.result is not None
    return [image["url"] for image in job.result["images"]]  # sync_mode: data URIs, so the bytes themselves


def alone(h: Harness, **body: object) -> list[str]:
    """The same input run alone (after the test's batch): the reference bytes."""
    job = h.submit(**body)
    h.release(1000)
    return images(h.wait_done(job)[0])


def test_a_job_joins_a_running_batch_at_the_next_step_boundary_with_identical_bytes(harness: Harness) -> None:
    h = harness
    long = h.submit(seed=1, num_inference_steps=8)
    h.start()
    h.steps_started(1)  # the long job is in its first step
    late = h.submit(seed=2, num_inference_steps=3, num_images=2)
    h.release()  # step 1 ends; at that boundary the worker claims the late job and prepares it
    h.steps_started(2)
    loop = h.worker.step_loop
    assert loop is not None
    wait_until(lambda: [w.job.id for w in loop.waiting] == [late.id], "late job claimed")
    wait_until(lambda: all(w.prepared.done() for w in loop.waiting), "late job prepared")
    assert StepsPipeline.step_log == [[1], [1]]
    h.release()  # step 2 ends; the late job joins at this boundary
    h.steps_started(3)
    assert StepsPipeline.step_log[2] == [1, 2]
    assert h.job(late).status == "IN_PROGRESS" and h.job(long).started_at is not None
    h.release(100)
    long_done, late_done = h.wait_done(long, late)
    assert StepsPipeline.step_log[:7] == [[1], [1], [1, 2], [1, 2], [1, 2], [1], [1]]
    assert late_done.finished_at is not None and long_done.finished_at is not None
    assert late_done.finished_at <= long_done.finished_at
    late_logs = h.messages(late)
    assert [m for m in late_logs if m.startswith("Step ")] == ["Step 1/3", "Step 2/3", "Step 3/3"]
    assert any("joined at a step boundary" in m for m in late_logs)
    assert late_done.metrics["batch_size"] == 2 and late_done.metrics["steps"] == 3
    assert "admission_wait" in late_done.metrics

    together = images(late_done), images(long_done)
    assert together[0] == alone(h, seed=2, num_inference_steps=3, num_images=2)
    assert together[1] == alone(h, seed=1, num_inference_steps=8)
    assert len(set(together[0])) == 2  # two rows of one item, each its own image


def test_a_cancelled_row_leaves_at_the_next_step_and_the_others_are_unchanged(harness: Harness) -> None:
    h = harness
    keep = h.submit(seed=1, num_inference_steps=5)
    gone = h.submit(seed=2, num_inference_steps=5)
    h.start()
    h.steps_started(1)
    assert StepsPipeline.step_log == [[1, 2]]
    assert h.store.request_cancel(gone.id) == "CANCELLATION_REQUESTED"
    h.release()
    (cancelled,) = h.wait_done(gone)
    assert cancelled.error is not None and cancelled.error["error_type"] == "request_cancelled"
    h.steps_started(2)
    assert StepsPipeline.step_log[1] == [1]  # the next step ran without it
    assert any("Cancelled" in m for m in h.messages(gone))
    h.release(100)
    (kept,) = h.wait_done(keep)
    assert images(kept) == alone(h, seed=1, num_inference_steps=5)


def test_a_finished_row_completes_before_the_longer_ones(harness: Harness) -> None:
    h = harness
    long = h.submit(seed=1, num_inference_steps=6)
    short = h.submit(seed=2, num_inference_steps=2)
    h.start()
    h.steps_started(1)
    h.release(2)  # two steps end; the long job is then held in step 3
    h.steps_started(3)
    (short_done,) = h.wait_done(short)
    assert images(short_done)
    assert h.job(long).status == "IN_PROGRESS"
    assert StepsPipeline.step_log == [[1, 2], [1, 2], [1]]
    h.release(100)
    h.wait_done(long)


def test_normal_priority_joins_before_low_within_the_row_budget(harness: Harness) -> None:
    h = harness
    h.settings.pipelines[ENDPOINT] = PipelineSettings(max_batch=2)  # two rows at a time
    first = h.submit(seed=1, num_inference_steps=4)
    h.start()
    h.steps_started(1)
    low = h.submit(seed=2, num_inference_steps=2, priority="low")
    normal = h.submit(seed=3, num_inference_steps=2)
    h.release()  # at this boundary one row is free: the normal-priority job is claimed for it
    h.steps_started(2)
    loop = h.worker.step_loop
    assert loop is not None
    wait_until(lambda: [w.job.id for w in loop.waiting] == [normal.id], "normal job claimed")
    wait_until(lambda: all(w.prepared.done() for w in loop.waiting), "normal job prepared")
    assert h.job(low).status == "IN_QUEUE"
    h.release()
    h.steps_started(3)
    assert StepsPipeline.step_log[2] == [1, 3]
    h.release(100)
    h.wait_done(first, low, normal)
    assert max(len(seeds) for seeds in StepsPipeline.step_log) == 2


def test_memory_budget_that_fits_one_pipeline_serves_both(harness: Harness) -> None:
    h = harness
    StepsPipeline.gate = None
    h.settings.gpu_memory_budget = str(int(1.5 * StepsPipeline.RESIDENT_BYTES))
    h.worker = Worker(h.settings, worker_id="w1")
    h.store = h.worker.store
    h.worker.load_pipelines()
    assert [e for e in (ENDPOINT, TWIN) if h.worker.loaded[e].resident] == [ENDPOINT]
    assert h.worker.states[TWIN][0] == "standby"
    subs = [h.submit(endpoint, seed=i, num_inference_steps=2) for i, endpoint in enumerate([ENDPOINT, TWIN] * 2)]
    h.serve()
    done = h.wait_done(*subs)
    assert all(j.error is None for j in done)
    twin_logs = h.messages(subs[1])
    assert any(m.startswith(f"Waiting for {TWIN} to load on cpu, evicting {ENDPOINT}") for m in twin_logs), twin_logs
    h.stop()
    h.thread = None
    assert sum(h.worker.loaded[e].resident for e in (ENDPOINT, TWIN)) == 1  # never both at once

    text = render_metrics(h.store)[0].decode()
    assert f'fal_onprem_pipeline_evictions_total{{endpoint="{ENDPOINT}",worker="w1"}}' in text
    assert f'fal_onprem_pipeline_loads_total{{endpoint="{TWIN}",worker="w1"}}' in text
    assert 'fal_onprem_gpu_memory_budget_bytes{worker="w1"} 1.5e+06' in text
    assert "fal_onprem_pipeline_resident{" in text and "fal_onprem_pipeline_memory_bytes{" in text
    assert f'fal_onprem_rows_per_step_count{{endpoint="{TWIN}"}}' in text
    assert f'fal_onprem_admission_wait_seconds_count{{endpoint="{ENDPOINT}"}} 2.0' in text


def test_a_stopping_worker_finishes_its_rows_and_gives_back_the_jobs_it_had_not_started(harness: Harness) -> None:
    h = harness
    running = h.submit(seed=1, num_inference_steps=3)
    h.start()
    h.steps_started(1)
    claimed = h.submit(seed=2, num_inference_steps=3)
    h.release()
    h.steps_started(2)
    loop = h.worker.step_loop
    assert loop is not None
    wait_until(lambda: [w.job.id for w in loop.waiting] == [claimed.id], "second job claimed")
    h.worker.stop()
    h.release(100)
    assert h.thread is not None
    h.thread.join(30)
    assert not h.thread.is_alive()
    (done,) = h.wait_done(running)
    assert images(done)
    back = h.job(claimed)
    assert back.status == "IN_QUEUE" and back.attempts == 0 and back.worker_id is None


def test_a_busy_worker_claims_its_next_one_shot_batch_early_only_when_a_full_batch_is_queued(harness: Harness) -> None:
    """Otherwise the jobs stay queued for idle workers (other GPUs) until this worker's batch boundary."""
    h = harness
    h.worker.load_pipelines()
    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    few = [h.submit("test/echo", image_url=image, seed=i) for i in range(3)]
    assert h.worker._prefetch() is None
    assert all(h.job(j).status == "IN_QUEUE" for j in few)
    many = few + [h.submit("test/echo", image_url=image, seed=i) for i in range(3, 10)]
    batch = h.worker._prefetch()
    assert batch is not None and [j.id for j in batch.jobs] == [j.id for j in many[:8]]
    h.worker.release([j.id for j in batch.jobs])
    assert all(h.job(j).status == "IN_QUEUE" and h.job(j).attempts == 0 for j in many)


def test_a_running_batch_stops_admitting_when_other_jobs_have_waited_longer(harness: Harness) -> None:
    """Jobs of another shape (same endpoint) or another endpoint at the head of the queue are not starved
    by a batch that keeps admitting: it drains, and they run next in arrival order."""
    h = harness
    h.submit(seed=1, num_inference_steps=2)
    h.start()
    h.steps_started(1)
    other_shape = h.submit(seed=2, num_inference_steps=2, image_size={"width": 16, "height": 8})
    same_shape = h.submit(seed=3, num_inference_steps=2)
    other_endpoint = h.submit(TWIN, seed=4, num_inference_steps=2)
    h.release(100)
    h.wait_done(other_shape, same_shape, other_endpoint)
    assert StepsPipeline.step_log == [[1], [1], [2], [2], [3], [3], [4], [4]]


def test_a_one_shot_batch_is_cut_to_the_activation_memory_left(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.echo_pipeline import EchoPipeline

    h = harness
    monkeypatch.setattr(EchoPipeline, "row_bytes", lambda self, inp: 1000, raising=False)
    h.settings.pipelines["test/echo"] = PipelineSettings(max_wait_ms=0)
    h.settings.gpu_memory_budget = str(StepsPipeline.RESIDENT_BYTES + 3500)  # test/steps + 3 echo rows
    h.worker = Worker(h.settings, worker_id="w1")
    h.store = h.worker.store
    h.worker.load_pipelines()
    assert h.worker.residency.activation_room() == 3500
    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    subs = [h.submit("test/echo", image_url=image, seed=i) for i in range(5)]
    batch = h.worker.claim_next()
    assert batch is not None and [j.id for j in batch.jobs] == [j.id for j in subs[:3]]
    assert [h.job(j).status for j in subs[3:]] == ["IN_QUEUE", "IN_QUEUE"]
    h.worker.run_batch(batch)
    assert all(h.job(j).status == "COMPLETED" and h.job(j).error is None for j in subs[:3])


def twin_runs_out_of_memory_next_to_steps(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """test/steps-twin's load raises CUDA's out-of-memory error while test/steps is resident."""
    from tests.support.steps_pipeline_twin import StepsTwinPipeline

    real_load = StepsTwinPipeline.load.__func__  # type: ignore[attr-defined]

    def load(cls: type, *args: object) -> object:
        if h.worker.loaded[ENDPOINT].resident:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_load(cls, *args)

    monkeypatch.setattr(StepsTwinPipeline, "load", classmethod(load))


def test_out_of_memory_while_loading_evicts_the_others_and_retries(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sizes may be unknown (no budget math helps): the device's own out-of-memory error makes room."""
    h = harness
    StepsPipeline.gate = None
    h.worker.load_pipelines()
    twin = h.worker.loaded[TWIN]
    h.worker._evict(twin)  # as if it had not fitted
    twin_runs_out_of_memory_next_to_steps(h, monkeypatch)
    job = h.submit(TWIN, seed=5, num_inference_steps=1)
    h.serve()
    (done,) = h.wait_done(job)
    assert done.error is None
    assert h.worker.loaded[TWIN].resident and not h.worker.loaded[ENDPOINT].resident


def test_a_pipeline_whose_declared_size_does_not_fit_waits_on_standby_without_loading(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``expected_resident_bytes`` (the manifests' sizes for real weights): no load-then-evict at start."""
    from tests.support.steps_pipeline_twin import StepsTwinPipeline

    h = harness
    StepsPipeline.gate = None
    size = classmethod(lambda cls, source, dtype="float32": StepsPipeline.RESIDENT_BYTES)
    monkeypatch.setattr(StepsTwinPipeline, "expected_resident_bytes", size)
    h.settings.gpu_memory_budget = str(int(1.5 * StepsPipeline.RESIDENT_BYTES))
    h.worker = Worker(h.settings, worker_id="w1")
    h.store = h.worker.store
    StepsPipeline.loads = 0
    h.worker.load_pipelines()
    assert StepsPipeline.loads == 1 and h.worker.loaded[ENDPOINT].resident
    assert h.worker.states[TWIN][0] == "standby" and h.worker.loaded[TWIN].pipeline is None
    job = h.submit(TWIN, seed=1, num_inference_steps=1)
    h.serve()
    (done,) = h.wait_done(job)
    assert done.error is None and StepsPipeline.loads == 2
    assert any(m.startswith(f"Waiting for {TWIN} to load on cpu, evicting {ENDPOINT}") for m in h.messages(job))


def test_out_of_memory_while_loading_at_start_leaves_the_pipeline_on_standby_not_failed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sizes unknown and the device full at start: the pipeline loads later, when a request makes room."""
    h = harness
    StepsPipeline.gate = None
    twin_runs_out_of_memory_next_to_steps(h, monkeypatch)
    h.worker.load_pipelines()
    assert h.worker.states[TWIN] == ("standby", "loads when a request needs it (out of device memory)")
    assert not h.worker.loaded[TWIN].failed and h.worker.loaded[ENDPOINT].resident
    job = h.submit(TWIN, seed=5, num_inference_steps=1)
    h.serve()
    (done,) = h.wait_done(job)
    assert done.error is None
    assert h.worker.loaded[TWIN].resident and not h.worker.loaded[ENDPOINT].resident
