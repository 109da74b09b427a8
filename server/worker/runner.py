"""The worker process: loads pipelines, claims batches, runs them, writes results (ARCHITECTURE.md §5).

One thread runs batches on the device; a prefetch thread claims the next batch and prepares its
inputs (fetch + decode + CPU preprocessing) meanwhile; a heartbeat thread keeps the leases of the
claimed jobs alive so that only a dead worker's jobs are re-queued.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from pipelines import registry
from pipelines.contract import BatchCancelled, ItemError, Pipeline, Prepared, WeightSource
from server.config import Settings
from server.errors import error_text, validation_detail
from server.files import FileStore
from server.store import Job, JobStore, PipelineState, open_store
from server.store.base import CANCELLED_ERROR
from server.worker.context import BatchContext
from server.worker.identity import worker_id as default_worker_id
from server.worker.inputs import make_image_loader
from server.worker.memory import TRIM_AFTER_DECODED_BYTES, fitting_prefix, held_bytes, release_freed_memory

log = logging.getLogger("fal_onprem.worker")

IDLE_SLEEP_S = 0.02
# A busy worker claims its next batch this much later than an idle one would (idle workers poll every
# IDLE_SLEEP_S), so with several GPUs a burst goes to the idle ones first instead of queueing behind us.
PREFETCH_DELAY_S = 5 * IDLE_SLEEP_S
HOUSEKEEPING_S = 1.0


@dataclass
class Loaded:
    endpoint: str
    pipeline: Pipeline
    max_batch: int
    max_wait_ms: int


@dataclass
class ClaimedBatch:
    loaded: Loaded
    jobs: list[Job]
    prepared: list[Prepared | dict[str, Any]]  # a dict is the item's error


def log_failed_job(job: Job, error: dict[str, Any]) -> None:
    """One server log line per failed job: request id, endpoint, error type and the reason."""
    log.warning(
        "request %s on %s failed: %s %s: %s",
        job.id,
        job.endpoint,
        error.get("status_code", 500),
        error.get("error_type") or "error",
        error_text(error),
    )


def _internal_error(exc: BaseException) -> dict[str, Any]:
    return {"status_code": 500, "detail": f"Internal error: {exc}", "error_type": "internal_server_error"}


class Worker:
    def __init__(
        self, settings: Settings, device: str = "cpu", worker_id: str | None = None, parent_pid: int | None = None
    ) -> None:
        self.settings = settings
        self.parent_pid = parent_pid
        self.device = device
        self.worker_id = worker_id or default_worker_id(device)
        self.store: JobStore = open_store(settings.resolved_store_url)
        self.files = FileStore(settings.files_dir)
        self.load_image = make_image_loader(settings, self.files)
        self.loaded: dict[str, Loaded] = {}
        self.stop_event = threading.Event()
        self._active: list[str] = []  # ids of claimed, unfinished jobs (for heartbeats)
        self._active_lock = threading.Lock()
        self._held_bytes: dict[str, int] = {}  # claimed job id -> bytes its prepared inputs hold
        self._prepare_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="prepare")
        self._prefetch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.batches_run = 0
        self._batch_started: float | None = None  # monotonic start of the running batch (watchdog)
        self.states: dict[str, tuple[str, str]] = {}  # endpoint -> (state, reason), re-reported as a heartbeat
        self._housekeeping_thread: threading.Thread | None = None

    # -- loading
    def weight_source(self) -> WeightSource:
        s = self.settings
        if s.weights_source == "real":
            return WeightSource.real(s.weights_dir)
        return WeightSource(s.weights_source, s.seed)

    def load_pipelines(self) -> None:
        self.start_housekeeping()  # loading can take minutes: keep the readiness reports fresh meanwhile
        specs = []
        for spec in registry.endpoints().values():
            if spec.pipeline is None:
                log.info("%s: not served: %s", spec.endpoint_id, spec.unavailable_reason)
            elif not self.settings.pipeline(spec.endpoint_id).enabled:
                log.info("%s: not served: disabled in the configuration", spec.endpoint_id)
            else:
                specs.append(spec)
        for spec in specs:
            self._report(spec.endpoint_id, "loading")
        for spec in specs:
            cfg = self.settings.pipeline(spec.endpoint_id)
            started = time.monotonic()
            try:
                cls = registry.pipeline_class(spec)
                pipe = cls.load(self.weight_source(), self.device, cfg.dtype or "float32")
            except Exception as exc:  # a pipeline that cannot load must not stop the others
                reason = str(exc) or type(exc).__name__
                log.warning("%s: not loaded: %s", spec.endpoint_id, reason)
                log.debug("%s", traceback.format_exc())
                self._report(spec.endpoint_id, "failed", reason)
                continue
            self.loaded[spec.endpoint_id] = Loaded(
                spec.endpoint_id,
                pipe,
                cls.max_batch if cfg.max_batch is None else cfg.max_batch,
                cls.max_wait_ms if cfg.max_wait_ms is None else cfg.max_wait_ms,
            )
            self._report(spec.endpoint_id, "ready")
            log.info(
                "%s: ready on %s (%s weights) in %.1fs",
                spec.endpoint_id,
                self.device,
                self.settings.weights_source,
                time.monotonic() - started,
            )

    def _report(self, endpoint: str, state: str, reason: str = "") -> None:
        self.states[endpoint] = (state, reason)
        self.store.set_pipeline_state(PipelineState(endpoint, self.worker_id, state, reason, self.device))  # type: ignore[arg-type]

    # -- claiming
    def _due(self, loaded: Loaded) -> bool:
        """A batch is due when the queue holds max_batch jobs or its oldest waited max_wait_ms."""
        oldest, count = self.store.oldest_queued(loaded.endpoint)
        if not count or oldest is None:
            return False
        return count >= loaded.max_batch or (time.time() - oldest) * 1000 >= loaded.max_wait_ms

    def claim_next(self) -> ClaimedBatch | None:
        candidates = [c for c in self.loaded.values() if self._due(c)]
        if not candidates:
            return None
        # Oldest head first across endpoints, so no endpoint starves another.
        candidates.sort(key=lambda c: self.store.oldest_queued(c.endpoint)[0] or float("inf"))
        for loaded in candidates:
            pipe = loaded.pipeline

            def key_fn(inp: dict[str, Any], pipe: Pipeline = pipe) -> Any:
                try:
                    return pipe.batch_key(pipe.Input.model_validate(inp))
                except ValidationError:
                    return ("invalid",)

            jobs = self.store.claim_batch(
                loaded.endpoint, self.worker_id, key_fn, loaded.max_batch, self.settings.job_lease_s
            )
            if jobs:
                with self._active_lock:
                    self._active.extend(j.id for j in jobs)
                prepared = list(self._prepare_pool.map(lambda j, p=pipe: self._prepare(p, j), jobs))
                jobs, prepared = self._within_byte_budget(jobs, prepared)
                return ClaimedBatch(loaded, jobs, prepared)
        return None

    def _within_byte_budget(
        self, jobs: list[Job], prepared: list[Prepared | dict[str, Any]]
    ) -> tuple[list[Job], list[Prepared | dict[str, Any]]]:
        """Keep the jobs whose prepared inputs fit in what ``max_prepared_bytes`` leaves (the running batch
        counts too; at least one job); the others go back to the queue unstarted, no attempt spent."""
        sizes = [held_bytes(p) if isinstance(p, Prepared) else 0 for p in prepared]
        with self._active_lock:
            keep = fitting_prefix(sizes, self.settings.max_prepared_bytes - sum(self._held_bytes.values()))
            self._held_bytes.update((j.id, size) for j, size in zip(jobs[:keep], sizes, strict=False))
        if keep < len(jobs):
            back = [j.id for j in jobs[keep:]]
            self.store.release(back, self.worker_id)
            with self._active_lock:
                self._active = [i for i in self._active if i not in set(back)]
            log.info("prepared inputs over max_prepared_bytes: %d job(s) back to the queue", len(back))
        return jobs[:keep], prepared[:keep]

    def _prefetch(self) -> ClaimedBatch | None:
        if self.stop_event.wait(PREFETCH_DELAY_S):
            return None
        return self.claim_next()

    def _prepare(self, pipe: Pipeline, job: Job) -> Prepared | dict[str, Any]:
        try:
            inp = pipe.Input.model_validate(job.input)
            decoded = 0

            def load(url: str, loc: list[str | int]) -> Any:
                nonlocal decoded
                image = self.load_image(url, loc)
                decoded += held_bytes(image)
                return image

            prepared = pipe.prepare(inp, load)
            if decoded >= TRIM_AFTER_DECODED_BYTES:  # large originals are gone: give their memory back
                release_freed_memory()
            return prepared
        except ValidationError as exc:
            detail = [{**d, "loc": ["body", *d["loc"]]} for d in validation_detail(list(exc.errors()))]
            return {"status_code": 422, "detail": detail, "error_type": "validation_error"}
        except ItemError as exc:
            return exc.to_dict()
        except Exception as exc:
            log.exception("prepare failed for %s", job.id)
            return _internal_error(exc)

    # -- running
    def run_batch(self, batch: ClaimedBatch) -> None:
        pipe = batch.loaded.pipeline
        started_at = time.time()
        # Jobs that timed out while prefetched (completed by the store) or were taken from us are skipped.
        mine = set(self.store.start([j.id for j in batch.jobs], self.worker_id))
        cancelled = self.store.is_cancel_requested(list(mine))
        jobs, errors = [], {}
        for job, prep in zip(batch.jobs, batch.prepared, strict=True):
            if job.id not in mine:
                continue
            if job.id in cancelled:
                errors[job.id] = CANCELLED_ERROR
            elif isinstance(prep, dict):
                errors[job.id] = prep
            else:
                jobs.append((job, prep))
        results: dict[str, Any] = {}
        run_time = 0.0
        if jobs:
            self._batch_started = time.monotonic()
            results = self._run_items(pipe, [j for j, _ in jobs], [p for _, p in jobs])
            run_time = time.monotonic() - self._batch_started
            self._batch_started = None
        for job in batch.jobs:
            if job.id not in mine:
                continue
            outcome = errors.get(job.id) or results.get(job.id)
            metrics = {
                "inference_time": round(run_time, 6),
                "queue_time": round(max(0.0, started_at - job.created_at), 6),
                "batch_size": len(jobs),
            }
            if isinstance(outcome, BaseModel):
                result = outcome.model_dump(mode="json", exclude_none=True)
                self.store.complete(job.id, result=result, metrics=metrics, worker_id=self.worker_id)
            else:
                error = outcome or _internal_error(RuntimeError("no result"))
                if self.store.complete(job.id, error=error, metrics=metrics, worker_id=self.worker_id):
                    log_failed_job(job, error)
        self._forget(batch)
        self.batches_run += 1

    def _forget(self, batch: ClaimedBatch) -> None:
        with self._active_lock:
            done = {j.id for j in batch.jobs}
            self._active = [i for i in self._active if i not in done]
            for job_id in done:
                self._held_bytes.pop(job_id, None)

    def _run_items(self, pipe: Pipeline, jobs: list[Job], prepared: list[Prepared]) -> dict[str, Any]:
        """Run one batch; on an unexpected exception, run its items one by one to isolate the culprit."""
        ctx = BatchContext(self.store, self.files, jobs)
        ctx.log(f"Running {jobs[0].endpoint} on {self.device} (batch of {len(jobs)})")
        try:
            outputs = pipe.run(prepared, ctx)
        except BatchCancelled:
            return {j.id: CANCELLED_ERROR for j in jobs}
        except Exception as exc:
            if len(jobs) > 1:
                log.warning("batch of %d failed (%s); retrying items one by one", len(jobs), exc)
                out: dict[str, Any] = {}
                for job, prep in zip(jobs, prepared, strict=True):
                    out.update(self._run_items(pipe, [job], [prep]))
                return out
            log.exception("%s failed", jobs[0].id)
            return {jobs[0].id: _internal_error(exc)}
        out = {}
        for i, (job, output) in enumerate(zip(jobs, outputs, strict=True)):
            if ctx.is_cancelled(i):
                out[job.id] = CANCELLED_ERROR
            elif isinstance(output, ItemError):
                out[job.id] = output.to_dict()
            else:
                out[job.id] = output
        return out

    # -- housekeeping (its own thread and store connection, so a long batch never delays it)
    def housekeeping(self, store: JobStore) -> None:
        """Lease heartbeats, start deadlines, dead workers' jobs, readiness and GPU memory reports."""
        started = self._batch_started
        if started is not None and time.monotonic() - started > self.settings.max_batch_run_s:
            # A hung pipeline (or CUDA call) would keep its jobs' leases fresh forever: exit instead, so
            # the leases lapse, the jobs are re-queued once (then failed), and the supervisor restarts us.
            log.error("a batch has run for more than %.0f s: exiting the worker", self.settings.max_batch_run_s)
            os._exit(75)
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.warning("the serve process %d is gone: stopping", self.parent_pid)
            self.stop()
        with self._active_lock:
            active = list(self._active)
        store.heartbeat(active, self.settings.job_lease_s, self.worker_id)
        store.expire_deadlines()
        store.recover_expired_leases(self.settings.max_attempts)
        for endpoint, (state, reason) in list(self.states.items()):
            store.set_pipeline_state(PipelineState(endpoint, self.worker_id, state, reason, self.device))  # type: ignore[arg-type]
        if self.device.startswith("cuda"):
            import torch

            store.set_worker_stats(
                self.worker_id,
                self.device,
                torch.cuda.memory_allocated(self.device),
                torch.cuda.memory_reserved(self.device),
            )

    def _housekeeping_loop(self) -> None:
        interval = min(HOUSEKEEPING_S, self.settings.job_lease_s / 3)
        store = open_store(self.settings.resolved_store_url)
        while not self.stop_event.wait(interval):
            try:
                self.housekeeping(store)
            except Exception:  # keep heart-beating whatever one round hit (e.g. a locked database)
                log.exception("housekeeping failed")

    def start_housekeeping(self) -> None:
        if self._housekeeping_thread is None:
            self._housekeeping_thread = threading.Thread(
                target=self._housekeeping_loop, daemon=True, name="housekeeping"
            )
            self._housekeeping_thread.start()

    def serve_forever(self, max_batches: int | None = None) -> None:
        self.start_housekeeping()
        pending: Future[ClaimedBatch | None] | None = None
        try:
            while not self.stop_event.is_set():
                batch = pending.result() if pending is not None else self.claim_next()
                pending = None
                if batch is None:
                    time.sleep(IDLE_SLEEP_S)
                    continue
                # Prepare the next batch on CPU threads while this one runs.
                pending = self._prefetch_pool.submit(self._prefetch)
                self.run_batch(batch)
                if max_batches is not None and self.batches_run >= max_batches:
                    break
        finally:
            if pending is not None:
                leftover = pending.result()
                if leftover is not None:  # prefetched but never started: back to the queue, no attempt spent
                    self.store.release([j.id for j in leftover.jobs], self.worker_id)
                    self._forget(leftover)
            self.stop_event.set()
            self.store.clear_pipeline_states(self.worker_id)  # a stopped worker serves nothing

    def stop(self) -> None:
        self.stop_event.set()
