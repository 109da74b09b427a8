"""The worker process: loads pipelines, claims batches, runs them, writes results (ARCHITECTURE.md §4-5).

One thread runs on the device. A one-shot pipeline runs a claimed batch with ``run``; a stepwise
(diffusion) pipeline is driven step by step by ``StepLoop``, which admits and retires jobs at step
boundaries. Claims happen only when the worker is idle or at a batch/step boundary, so with several GPUs a
burst goes to the idle workers first; inputs of claimed jobs are prepared on CPU threads while the device
runs. Pipelines stay resident within a GPU memory budget (``Residency``): a job for an evicted one waits
in the queue while it loads. A housekeeping thread keeps the leases of claimed jobs alive, so that only a
dead worker's jobs are re-queued, and reports readiness and metrics.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from pipelines import registry
from pipelines.contract import (
    BatchCancelled,
    EndpointSpec,
    ItemError,
    Pipeline,
    Prepared,
    StepwisePipeline,
    WeightSource,
)
from server.config import Settings
from server.errors import error_text, validation_detail
from server.files import open_file_store
from server.store import Completion, Job, JobStore, LogEntry, PipelineState, open_store
from server.store.base import CANCELLED_ERROR
from server.store.notify import QUEUE
from server.store.retrying import retrying
from server.worker.context import LOG_BUFFER_S, BatchContext, JobContext
from server.worker.host_memory import TRIM_AFTER_DECODED_BYTES, fitting_prefix, held_bytes, release_freed_memory
from server.worker.identity import worker_id as default_worker_id
from server.worker.inputs import make_image_loader, quick_to_prepare
from server.worker.memory import Residency, default_budget, parse_bytes
from server.worker.stats import WorkerStats
from server.worker.stepping import StepLoop

log = logging.getLogger("fal_onprem.worker")

# Idle workers wake on the store's queue notifications (at once, so with several GPUs a burst reaches the
# idle ones while a busy one prefetches); this floor only bounds re-checks of a due but unclaimable queue.
MIN_IDLE_WAIT_S = 0.01
HOUSEKEEPING_S = 1.0


@dataclass
class Loaded:
    """A pipeline this worker serves; ``resident`` while its weights are on the device."""

    endpoint: str
    pipeline: Pipeline | None  # None while unloaded; kept (in CPU RAM) when evicted by ``move_to("cpu")``
    max_batch: int  # items per batch; rows per step for stepwise pipelines
    max_wait_ms: int
    cls: type[Pipeline] | None = None
    dtype: str = "float32"
    resident: bool = True
    failed: bool = False

    @property
    def stepwise(self) -> bool:
        return isinstance(self.pipeline, StepwisePipeline) or (
            self.cls is not None and issubclass(self.cls, StepwisePipeline)
        )


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
        self.stop_event = threading.Event()
        self.store: JobStore = retrying(open_store(settings.resolved_store_url), self.stop_event)
        self.files = open_file_store(settings.files_url, settings.files_dir, settings.s3_endpoint_url)
        self.load_image = make_image_loader(settings, self.files)
        self.loaded: dict[str, Loaded] = {}
        self.residency = Residency(self._memory_budget())
        self._measured: dict[str, int] = {}  # endpoint -> resident bytes at its last load
        self.stats = WorkerStats()
        self._active: list[str] = []  # ids of claimed, unfinished jobs (for heartbeats)
        self._active_lock = threading.Lock()
        self._held_bytes: dict[str, int] = {}  # claimed job id -> bytes its prepared inputs hold
        self._prepare_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="prepare")
        self._prefetch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.batches_run = 0
        self._batch_started: float | None = None  # monotonic start of the running batch or step (watchdog)
        self.states: dict[str, tuple[str, str]] = {}  # endpoint -> (state, reason), re-reported as a heartbeat
        self._housekeeping_thread: threading.Thread | None = None
        self.step_loop: StepLoop | None = None  # the running stepwise batch, if any
        self._contexts: weakref.WeakSet[JobContext] = weakref.WeakSet()  # running ones: housekeeping flushes logs
        # A submit wakes an idle worker at once; without notifications it polls every poll_fallback_s.
        self.wakeups = self.store.events.subscribe(QUEUE) if settings.notify_events else None

    # -- loading (lazy within the memory budget, least recently used evicted first)
    def weight_source(self) -> WeightSource:
        s = self.settings
        if s.weights_source == "real":
            return WeightSource.real(s.weights_dir)
        return WeightSource(s.weights_source, s.seed)

    def _memory_budget(self) -> int | None:
        if self.settings.gpu_memory_budget:
            return parse_bytes(self.settings.gpu_memory_budget)
        if not self.device.startswith("cuda"):
            return None  # CPU: no device budget unless one is configured
        import torch

        free, _total = torch.cuda.mem_get_info(self.device)
        return default_budget(free)

    def load_pipelines(self) -> None:
        """Load every served pipeline that fits the budget now; the others load when a job needs them."""
        self.start_housekeeping()  # loading can take minutes: keep the readiness reports fresh meanwhile
        specs: list[EndpointSpec] = []
        for spec in registry.endpoints().values():
            if spec.pipeline is None:
                log.info("%s: not served: %s", spec.endpoint_id, spec.unavailable_reason)
            elif not self.settings.pipeline(spec.endpoint_id).enabled:
                log.info("%s: not served: disabled in the configuration", spec.endpoint_id)
            else:
                specs.append(spec)
        for spec in specs:
            self._report(spec.endpoint_id, "loading")
        if self.residency.budget is not None:
            log.info("GPU memory budget on %s: %.2f GiB", self.device, self.residency.budget / 2**30)
        for spec in specs:
            cfg = self.settings.pipeline(spec.endpoint_id)
            try:
                cls = registry.pipeline_class(spec)
            except Exception as exc:  # a pipeline that cannot load must not stop the others
                self._failed(spec.endpoint_id, exc)
                continue
            loaded = Loaded(
                spec.endpoint_id,
                None,
                cls.max_batch if cfg.max_batch is None else cfg.max_batch,
                cls.max_wait_ms if cfg.max_wait_ms is None else cfg.max_wait_ms,
                cls=cls,
                dtype=cfg.dtype or (cls.gpu_dtype if self.device.startswith("cuda") else "float32"),
                resident=False,
            )
            self.loaded[spec.endpoint_id] = loaded
            if self.residency.fits(self._expected_bytes(loaded)):
                self._load(loaded)
            else:
                self._report(spec.endpoint_id, "standby", "loads when a request needs it (GPU memory budget)")
                log.info("%s: standby (loads when a request needs it: GPU memory budget)", spec.endpoint_id)
            if loaded.resident and not self.residency.fits(0):  # measured bigger than announced
                self._evict(loaded)

    def _expected_bytes(self, loaded: Loaded) -> int:
        if loaded.endpoint in self.residency:
            return self.residency.bytes_of(loaded.endpoint)
        known = self._measured.get(loaded.endpoint)
        if known is not None:
            return known
        assert loaded.cls is not None
        return loaded.cls.expected_resident_bytes(self.weight_source(), loaded.dtype)  # type: ignore[arg-type]

    def _device_allocated(self) -> int | None:
        if not self.device.startswith("cuda"):
            return None
        import torch

        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)

    def _load(self, loaded: Loaded, retry_after_evicting_all: bool = False) -> bool:
        """Load (or move back from CPU RAM) one pipeline onto the device; False when it failed. Out of device
        memory (sizes were unknown or estimated low), it may evict every other pipeline and try once more."""
        assert loaded.cls is not None
        self._report(loaded.endpoint, "loading")
        started, before = time.monotonic(), self._device_allocated()
        try:
            if loaded.pipeline is not None:
                loaded.pipeline.move_to(self.device)
            else:
                loaded.pipeline = loaded.cls.load(self.weight_source(), self.device, loaded.dtype)  # type: ignore[arg-type]
        except Exception as exc:
            others = [e for e, lo in self.loaded.items() if lo.resident and self.residency.bytes_of(e) > 0]
            out_of_memory = "out of memory" in str(exc).lower()
            if retry_after_evicting_all and others and out_of_memory:
                log.warning("%s: out of device memory while loading; evicting %s", loaded.endpoint, ", ".join(others))
                for endpoint in others:
                    self._evict(self.loaded[endpoint])
                return self._load(loaded)
            loaded.pipeline = None  # a half-moved pipeline is not trusted: the next try loads it afresh
            if out_of_memory and others:  # at start: it does not fit next to the others; a request makes room
                self._free_device_memory()
                self._report(loaded.endpoint, "standby", "loads when a request needs it (out of device memory)")
                log.warning("%s: standby (out of device memory while loading next to %s)", loaded.endpoint,
                            ", ".join(others))  # fmt: skip
                return False
            self._failed(loaded.endpoint, exc)
            return False
        after = self._device_allocated()
        nbytes = loaded.pipeline.resident_bytes() or (after - before if after is not None and before is not None else 0)
        self._measured[loaded.endpoint] = nbytes
        self.residency.add(loaded.endpoint, nbytes)
        loaded.resident = True
        self.stats.inc("pipeline_loads", loaded.endpoint)
        self._report(loaded.endpoint, "ready")
        log.info(
            "%s: ready on %s (%s weights, %.0f MiB resident) in %.1fs",
            loaded.endpoint,
            self.device,
            self.settings.weights_source,
            nbytes / 2**20,
            time.monotonic() - started,
        )
        return True

    def _evict(self, loaded: Loaded) -> None:
        """Free a pipeline's device memory: to CPU RAM when it can move, else unload it."""
        how = "unloaded"
        if loaded.pipeline is not None and self.device.startswith("cuda"):
            try:
                loaded.pipeline.move_to("cpu")
                how = "moved to CPU RAM"
            except NotImplementedError:
                loaded.pipeline = None
        else:
            loaded.pipeline = None
        self.residency.remove(loaded.endpoint)
        loaded.resident = False
        self._free_device_memory()
        self.stats.inc("pipeline_evictions", loaded.endpoint)
        self._report(loaded.endpoint, "standby", f"evicted ({how}); loads when a request needs it")
        log.info("%s: evicted from %s (%s) to make room", loaded.endpoint, self.device, how)

    def _free_device_memory(self) -> None:
        """Give the freed tensors' cached blocks back, so the next load sees them as free."""
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _make_resident(self, loaded: Loaded) -> bool:
        """Evict least recently used pipelines until this one fits, then load it. Its queued jobs are told."""
        if loaded.resident:
            self.residency.touch(loaded.endpoint)
            return True
        victims = self.residency.victims(self._expected_bytes(loaded), keep=loaded.endpoint)
        note = f", evicting {', '.join(victims)}" if victims else ""
        message = f"Waiting for {loaded.endpoint} to load on {self.device}{note}"
        for job_id in self.store.queued_ids(loaded.endpoint, loaded.max_batch):
            self.store.append_log(job_id, LogEntry(message))
        log.info("%s", message)
        for endpoint in victims:
            self._evict(self.loaded[endpoint])
        return self._load(loaded, retry_after_evicting_all=True)

    def _failed(self, endpoint: str, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        log.warning("%s: not loaded: %s", endpoint, reason)
        log.debug("%s", traceback.format_exc())
        if endpoint in self.loaded:
            self.loaded[endpoint].failed = True
        self._report(endpoint, "failed", reason)

    def _report(self, endpoint: str, state: str, reason: str = "") -> None:
        self.states[endpoint] = (state, reason)
        self.store.set_pipeline_state(PipelineState(endpoint, self.worker_id, state, reason, self.device))  # type: ignore[arg-type]

    # -- claiming (only when idle or at a batch/step boundary)
    @staticmethod
    def _due(loaded: Loaded, heads: dict[str, tuple[float, int]]) -> bool:
        """A batch is due when the queue holds max_batch jobs or its oldest waited max_wait_ms."""
        if loaded.endpoint not in heads:
            return False
        oldest, count = heads[loaded.endpoint]
        return count >= loaded.max_batch or (time.time() - oldest) * 1000 >= loaded.max_wait_ms

    def _key_fn(self, loaded: Loaded) -> Callable[[dict[str, Any]], Hashable]:
        """Which jobs may share a batch: ``batch_key``, or ``step_key`` for a stepwise pipeline."""
        pipe = loaded.pipeline
        assert pipe is not None
        key = pipe.step_key if isinstance(pipe, StepwisePipeline) else pipe.batch_key

        def key_fn(inp: dict[str, Any]) -> Hashable:
            try:
                return key(pipe.Input.model_validate(inp))
            except ValidationError:
                return ("invalid",)

        return key_fn

    def _claim(self, loaded: Loaded, limit: int, key: Hashable | None = None) -> list[Job]:
        jobs = self.store.claim_batch(
            loaded.endpoint,
            self.worker_id,
            self._key_fn(loaded),
            limit,
            self.settings.job_lease_s,
            key=key,
            max_running_per_key=self.settings.max_running_per_key,
        )
        if jobs:
            with self._active_lock:
                self._active.extend(j.id for j in jobs)
        return jobs

    def claim_next(
        self, resident_only: bool = False, heads: dict[str, tuple[float, int]] | None = None
    ) -> ClaimedBatch | None:
        """Claim the batch whose head waited longest, loading its pipeline first if it is not resident.
        ``heads``: ``store.queue_heads()`` if the caller just read it."""
        heads = self.store.queue_heads() if heads is None else heads
        candidates = [
            c
            for c in self.loaded.values()
            if not c.failed and (c.resident or not resident_only) and self._due(c, heads)
        ]
        if not candidates:
            return None
        # Oldest head first across endpoints, so no endpoint starves another.
        candidates.sort(key=lambda c: heads[c.endpoint][0])
        for loaded in candidates:
            if not self._make_resident(loaded):
                continue
            jobs = self._within_memory(loaded, self._claim(loaded, loaded.max_batch))
            if jobs:
                pipe = loaded.pipeline
                assert pipe is not None
                if len(jobs) == 1 or all(quick_to_prepare(j.input) for j in jobs):  # no thread hop
                    prepared = [self._prepare(pipe, job) for job in jobs]
                else:
                    prepared = list(self._prepare_pool.map(lambda j, p=pipe: self._prepare(p, j), jobs))
                jobs, prepared = self._within_byte_budget(jobs, prepared)
                return ClaimedBatch(loaded, jobs, prepared)
        return None

    def _within_memory(self, loaded: Loaded, jobs: list[Job]) -> list[Job]:
        """The longest head of a claimed one-shot batch whose rows fit the activation memory (at least one
        job); the rest go back to the queue. Stepwise batches admit against it at every step instead."""
        room = self.residency.activation_room()
        pipe = loaded.pipeline
        if room is None or pipe is None or loaded.stepwise or len(jobs) < 2:
            return jobs
        used = 0
        for n, job in enumerate(jobs):
            try:
                used += pipe.row_bytes(pipe.Input.model_validate(job.input))
            except ValidationError:
                continue  # fails at prepare, costs nothing
            if n and used > room:
                self.release([j.id for j in jobs[n:]])
                return jobs[:n]
        return jobs

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
            self.release([j.id for j in jobs[keep:]])
            log.info("prepared inputs over max_prepared_bytes: %d job(s) back to the queue", len(jobs) - keep)
        return jobs[:keep], prepared[:keep]

    def _backlog(self, heads: dict[str, tuple[float, int]]) -> bool:
        """The queue holds a full batch more for a resident pipeline (worth claiming at a batch boundary)."""
        return any(
            c.resident and not c.failed and heads.get(c.endpoint, (0.0, 0))[1] >= c.max_batch
            for c in self.loaded.values()
        )

    def _prefetch(self, heads: dict[str, tuple[float, int]] | None = None) -> ClaimedBatch | None:
        """At a batch boundary: claim the next batch now, to prepare it while this one runs, only when the
        queue holds a full batch more; otherwise the next claim waits for the boundary after this batch, so
        that idle workers (other GPUs) take the jobs first."""
        if self.stop_event.is_set():
            return None
        heads = self.store.queue_heads() if heads is None else heads
        return self.claim_next(resident_only=True, heads=heads) if self._backlog(heads) else None

    def _idle_wait(self, heads: dict[str, tuple[float, int]]) -> None:
        """Until a submit wakes us, the oldest queued job's batching window closes, or the fallback poll.
        ``heads`` were read before the last claim attempt: a submit since then is a pending wake-up."""
        timeout = self.settings.poll_fallback_s
        now = time.time()
        for loaded in self.loaded.values():
            if loaded.endpoint in heads:
                oldest = heads[loaded.endpoint][0]
                timeout = min(timeout, max(MIN_IDLE_WAIT_S, oldest + loaded.max_wait_ms / 1000 - now))
        if self.wakeups is None:
            self.stop_event.wait(timeout)
        else:
            self.wakeups.wait(timeout)

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
    def _complete_all(
        self, outcomes: list[tuple[Job, Any, dict[str, Any]]], logs: list[tuple[str, LogEntry]] = ()
    ) -> None:
        """Write jobs' results (output models) or errors (ItemErrors or error dicts), with their buffered log
        lines, in one transaction."""
        completions, errors = [], {}
        for job, outcome, metrics in outcomes:
            if isinstance(outcome, ItemError):
                outcome = outcome.to_dict()
            if isinstance(outcome, BaseModel):
                completions.append(
                    Completion(job.id, outcome.model_dump(mode="json", exclude_none=True), None, metrics)
                )
            else:
                errors[job.id] = error = outcome or _internal_error(RuntimeError("no result"))
                completions.append(Completion(job.id, None, error, metrics))
        done = set(self.store.complete_many(completions, self.worker_id, logs))
        for job, _, _ in outcomes:
            if job.id in errors and job.id in done:
                log_failed_job(job, errors[job.id])

    def run_batch(self, batch: ClaimedBatch) -> None:
        pipe = batch.loaded.pipeline
        assert pipe is not None
        self.residency.touch(batch.loaded.endpoint)
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
        logs: list[tuple[str, LogEntry]] = []
        run_time = 0.0
        if jobs:
            self._batch_started = time.monotonic()
            results = self._run_items(pipe, [j for j, _ in jobs], [p for _, p in jobs], logs)
            run_time = time.monotonic() - self._batch_started
            self._batch_started = None
        outcomes = []
        for job in batch.jobs:
            if job.id not in mine:
                continue
            metrics = {
                "inference_time": round(run_time, 6),
                "queue_time": round(max(0.0, started_at - job.created_at), 6),
                "batch_size": len(jobs),
            }
            outcomes.append((job, errors.get(job.id) or results.get(job.id), metrics))
        self._complete_all(outcomes, logs)
        self._forget([j.id for j in batch.jobs])
        self.batches_run += 1

    def _forget(self, job_ids: list[str]) -> None:
        with self._active_lock:
            done = set(job_ids)
            self._active = [i for i in self._active if i not in done]
            for job_id in done:
                self._held_bytes.pop(job_id, None)

    def _run_items(
        self, pipe: Pipeline, jobs: list[Job], prepared: list[Prepared], logs: list[tuple[str, LogEntry]]
    ) -> dict[str, Any]:
        """Run one batch; on an unexpected exception, run its items one by one to isolate the culprit. The
        log lines still buffered at the end are added to ``logs`` (written with the completions)."""
        ctx = BatchContext(self.store, self.files, jobs)
        self._contexts.add(ctx)
        try:
            return self._run_in(ctx, pipe, jobs, prepared, logs)
        finally:
            self._contexts.discard(ctx)
            logs += ctx.take_logs()

    def _run_in(
        self,
        ctx: BatchContext,
        pipe: Pipeline,
        jobs: list[Job],
        prepared: list[Prepared],
        logs: list[tuple[str, LogEntry]],
    ) -> dict[str, Any]:
        ctx.log(f"Running {jobs[0].endpoint} on {self.device} (batch of {len(jobs)})")
        try:
            outputs = pipe.run(prepared, ctx)
        except BatchCancelled:
            return {j.id: CANCELLED_ERROR for j in jobs}
        except Exception as exc:
            if len(jobs) > 1:
                log.warning("batch of %d failed (%s); retrying items one by one", len(jobs), exc)
                out: dict[str, Any] = {}
                logs += ctx.take_logs()  # this batch's lines come first
                for job, prep in zip(jobs, prepared, strict=True):
                    out.update(self._run_items(pipe, [job], [prep], logs))
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
            log.error(
                "a batch (or one denoising step) has run for more than %.0f s: exiting the worker",
                self.settings.max_batch_run_s,
            )
            os._exit(75)
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.warning("the serve process %d is gone: stopping", self.parent_pid)
            self.stop()
        for ctx in list(self._contexts):
            ctx.flush(older_than=LOG_BUFFER_S)  # a silent batch's early lines still reach the store
        with self._active_lock:
            active = list(self._active)
        store.heartbeat(active, self.settings.job_lease_s, self.worker_id)
        store.expire_deadlines()
        store.recover_expired_leases(self.settings.max_attempts)
        for endpoint, (state, reason) in list(self.states.items()):
            store.set_pipeline_state(PipelineState(endpoint, self.worker_id, state, reason, self.device))  # type: ignore[arg-type]
        self.report_metrics(store)
        if self.device.startswith("cuda"):
            import torch

            store.set_worker_stats(
                self.worker_id,
                self.device,
                torch.cuda.memory_allocated(self.device),
                torch.cuda.memory_reserved(self.device),
            )

    def report_metrics(self, store: JobStore) -> None:
        """Write this worker's numbers (resident pipelines, budget, rows per step...) for /metrics."""
        for endpoint, loaded in list(self.loaded.items()):
            self.stats.set("pipeline_resident", endpoint, 1.0 if loaded.resident else 0.0)
            self.stats.set("pipeline_memory_bytes", endpoint, self.residency.bytes_of(endpoint))
        if self.residency.budget is not None:
            self.stats.set("gpu_memory_budget_bytes", "", self.residency.budget)
        gauges, histograms = self.stats.snapshot()
        store.set_worker_metrics(self.worker_id, gauges, histograms)

    def _housekeeping_loop(self) -> None:
        interval = min(HOUSEKEEPING_S, self.settings.job_lease_s / 3)
        store = open_store(self.settings.resolved_store_url)
        while not self.stop_event.wait(interval):
            try:
                self.housekeeping(store)
            except store.transient_errors as exc:  # the next round retries
                log.warning("housekeeping: job store unavailable (%s)", exc)
            except Exception:  # keep heart-beating whatever one round hit
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
                batch = pending.result() if pending is not None else None
                pending = None
                if batch is None:
                    heads = self.store.queue_heads()  # one read per turn decides the claim and the wait
                    batch = self.claim_next(heads=heads)
                    if batch is None:
                        self._idle_wait(heads)
                        continue
                if batch.loaded.stepwise:
                    self.step_loop = StepLoop(self, batch)
                    self.step_loop.run()  # until its last row leaves; jobs join and leave at step boundaries
                    self.step_loop = None
                    self.batches_run += 1
                else:
                    # A boundary: claim the next batch now, while this one runs, only when there is a
                    # backlog (see _prefetch); no thread hop when there is none.
                    heads = self.store.queue_heads()
                    if self._backlog(heads):
                        pending = self._prefetch_pool.submit(self._prefetch, heads)
                    self.run_batch(batch)
                if max_batches is not None and self.batches_run >= max_batches:
                    break
        finally:
            if pending is not None:
                leftover = pending.result()
                if leftover is not None:  # prefetched but never started: back to the queue, no attempt spent
                    self.release([j.id for j in leftover.jobs])
            self.stop_event.set()
            self.report_metrics(self.store)
            self.store.clear_pipeline_states(self.worker_id)  # a stopped worker serves nothing

    def release(self, job_ids: list[str]) -> None:
        """Give claimed jobs that never started back to the queue (no attempt spent)."""
        self.store.release(job_ids, self.worker_id)
        self._forget(job_ids)

    def stop(self) -> None:
        self.stop_event.set()
        if self.wakeups is not None:
            self.wakeups.wake()
