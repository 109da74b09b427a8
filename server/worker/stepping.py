"""Step-level scheduling of a stepwise (diffusion) pipeline (ARCHITECTURE.md §4.1).

``StepLoop`` runs one batch of compatible jobs (same ``step_key``) from its first job until its last row
leaves. At every step boundary it:
  1. admits prepared jobs that were claimed meanwhile (``begin`` + ``merge``), normal priority first, within
     the pipeline's row budget (``max_batch`` rows) and the worker's activation memory (``row_bytes``);
  2. claims more compatible jobs while there is room, unless another batch's jobs have waited longer (then
     it stops admitting and drains, so it cannot starve them); their inputs are prepared on CPU threads
     while the next step runs;
  3. runs one ``step`` for all rows (the watchdog times each step, not the whole batch, which may go on
     for as long as jobs keep joining);
  4. retires finished items (``finish``): their jobs complete at once, before longer ones end;
  5. drops cancelled items (``drop``): they leave before the next step.
A row's result does not depend on when it joined (the pipeline's contract), so a job's bytes are the same
alone or joined mid-flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.contract import Prepared, StepwisePipeline
from server.store import Job, LogEntry
from server.store.base import CANCELLED_ERROR, PRIORITY_RANK
from server.worker.context import StepContext

if TYPE_CHECKING:
    from server.worker.runner import ClaimedBatch, Worker

log = logging.getLogger("fal_onprem.worker")


@dataclass
class Waiting:
    """A claimed job whose input is being prepared; it joins at the first boundary after that."""

    job: Job
    prepared: Future[Prepared | dict[str, Any]]


@dataclass
class Member:
    """A job whose rows are in the running batch."""

    job: Job
    rows: int
    cost: int  # activation bytes of its rows
    admitted: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    first_step_at: float | None = None
    steps: int = 0
    peak_items: int = 0


def _done(value: Prepared | dict[str, Any]) -> Future[Prepared | dict[str, Any]]:
    future: Future[Prepared | dict[str, Any]] = Future()
    future.set_result(value)
    return future


def _internal_error(exc: BaseException) -> dict[str, Any]:
    return {"status_code": 500, "detail": f"Internal error: {exc}", "error_type": "internal_server_error"}


class StepLoop:
    def __init__(self, worker: Worker, batch: ClaimedBatch) -> None:
        self.worker = worker
        self.loaded = batch.loaded
        pipe = batch.loaded.pipeline
        assert isinstance(pipe, StepwisePipeline)
        self.pipe = pipe
        self.endpoint = batch.loaded.endpoint
        self.key: Hashable = worker._key_fn(batch.loaded)(batch.jobs[0].input)
        self.ctx = StepContext(worker.store, worker.files)
        worker._contexts.add(self.ctx)  # housekeeping flushes its buffered log lines
        self.state: Any = None
        self.members: dict[int, Member] = {}
        self.waiting = [Waiting(j, _done(p)) for j, p in zip(batch.jobs, batch.prepared, strict=True)]

    # -- the loop
    def run(self) -> None:
        try:
            while True:
                self._admit()
                if not self.members:
                    if not self.waiting or self.worker.stop_event.is_set():
                        return
                    wait([w.prepared for w in self.waiting], return_when=FIRST_COMPLETED)
                    continue
                self._claim()
                self._step()
                self._retire()
                self._drop_cancelled()
        finally:
            if self.waiting:  # a stopping worker: claimed jobs that never started go back to the queue
                wait([w.prepared for w in self.waiting])
                self.worker.release([w.job.id for w in self.waiting])
            for key, member in list(self.members.items()):  # only after an unexpected error in the loop itself
                self._complete(key, member, _internal_error(RuntimeError("the stepwise batch stopped")))
            self.worker._contexts.discard(self.ctx)
            self.ctx.flush()  # lines of jobs that left without completing here (none, unless the loop failed)

    @property
    def rows(self) -> int:
        return sum(m.rows for m in self.members.values())

    @property
    def cost(self) -> int:
        return sum(m.cost for m in self.members.values())

    # -- 1. admission
    def _fits(self, rows: int, cost: int, new_rows: int, new_cost: int) -> bool:
        if self.rows + new_rows + rows > self.loaded.max_batch:
            return False
        room = self.worker.residency.activation_room()
        return room is None or self.cost + new_cost + cost <= room

    def _admit(self) -> None:
        if self.worker.stop_event.is_set():
            return  # a stopping worker finishes its rows and takes no one else
        ready = [w for w in self.waiting if w.prepared.done()]
        ready.sort(key=lambda w: (PRIORITY_RANK[w.job.priority], w.job.created_at))
        joining: list[tuple[Job, Prepared, int, int]] = []
        errors: list[tuple[Job, dict[str, Any]]] = []
        new_rows = new_cost = 0
        for w in ready:
            prep = w.prepared.result()
            if isinstance(prep, dict):
                errors.append((w.job, prep))
                continue
            rows = self.pipe.rows(prep.input)
            cost = rows * self.pipe.row_bytes(prep.input)
            if (self.members or joining) and not self._fits(rows, cost, new_rows, new_cost):
                break  # strict order: a big job is not overtaken forever by small ones
            joining.append((w.job, prep, rows, cost))
            new_rows, new_cost = new_rows + rows, new_cost + cost
        leaving = {job.id for job, _ in errors} | {job.id for job, *_ in joining}
        self.waiting = [w for w in self.waiting if w.job.id not in leaving]
        if not leaving:
            return
        store = self.worker.store
        mine = set(store.start(sorted(leaving), self.worker.worker_id))  # the attempt counts from here
        cancelled = store.is_cancel_requested(list(mine))
        self.worker._forget([i for i in leaving if i not in mine])
        for job, error in errors:
            if job.id in mine:
                self._finish_job(job, error, {})
        items: list[Prepared] = []
        for job, prep, rows, cost in joining:
            if job.id not in mine:
                continue
            if job.id in cancelled:
                self._finish_job(job, CANCELLED_ERROR, {})
                continue
            prep.key = self.ctx.add(job)
            self.members[prep.key] = Member(job, rows, cost)
            items.append(prep)
        if items:
            self._begin(items)

    def _begin(self, items: list[Prepared]) -> None:
        total = self.rows
        for prep in items:
            self.ctx.log(
                f"Running {self.endpoint} on {self.worker.device}: joined at a step boundary "
                f"({total} rows in the batch)",
                prep.key,
            )
        try:
            self._set_watchdog()
            part = self.pipe.begin(items, self.ctx)
        except Exception as exc:
            if len(items) > 1:  # isolate the item that broke it
                log.warning("begin of %d items failed (%s); retrying them one by one", len(items), exc)
                for prep in items:
                    self._begin([prep])
                return
            log.exception("%s: begin failed", self.members[items[0].key].job.id)
            self._complete(items[0].key, self.members[items[0].key], _internal_error(exc))
            return
        finally:
            self._clear_watchdog()
        self.state = part if self.state is None else self.pipe.merge(self.state, part)

    # -- 2. claiming
    def _our_turn(self) -> bool:
        """True while this batch may take more jobs: its endpoint has queued jobs and no other endpoint's
        queue head has waited longer (else drain, so the worker moves on to that one)."""
        heads = self.worker.store.queue_heads()
        if self.endpoint not in heads:
            return False
        oldest = heads[self.endpoint][0]
        return not any(
            other.endpoint != self.endpoint and not other.failed and other.endpoint in heads
            and heads[other.endpoint][0] < oldest
            for other in self.worker.loaded.values()
        )  # fmt: skip

    def _claim(self) -> None:
        if self.worker.stop_event.is_set():
            return
        room = self.loaded.max_batch - self.rows - len(self.waiting)
        if room <= 0 or not self._our_turn():
            return
        jobs = self.worker._claim(self.loaded, room, key=self.key)
        for job in jobs:
            self.waiting.append(Waiting(job, self.worker._prepare_pool.submit(self.worker._prepare, self.pipe, job)))

    # -- 3. one step
    def _set_watchdog(self) -> None:
        self.worker._batch_started = time.monotonic()

    def _clear_watchdog(self) -> None:
        self.worker._batch_started = None

    def _step(self) -> None:
        now = time.time()
        for member in self.members.values():
            member.first_step_at = member.first_step_at or now
            member.peak_items = max(member.peak_items, len(self.members))
        self.worker.stats.observe("rows_per_step", self.endpoint, self.rows)
        self.worker.residency.touch(self.endpoint)
        try:
            self._set_watchdog()
            self.pipe.step(self.state, self.ctx)
        except Exception as exc:  # rows' scheduler positions are unknown now: every item of the batch fails
            log.exception("%s: step failed for %d items", self.endpoint, len(self.members))
            for key, member in list(self.members.items()):
                self._complete(key, member, _internal_error(exc))
            self.state = None
            return
        finally:
            self._clear_watchdog()
        for member in self.members.values():
            member.steps += 1

    # -- 4. retiring finished items
    def _retire(self) -> None:
        if not self.members:
            return
        finished = self.pipe.done(self.state)
        if not finished:
            return
        try:
            self._set_watchdog()
            results: list[Any] = list(self.pipe.finish(self.state, finished, self.ctx))
        except Exception as exc:
            log.exception("%s: finish failed for %d items", self.endpoint, len(finished))
            self.pipe.drop(self.state, finished)
            results = [_internal_error(exc)] * len(finished)
        finally:
            self._clear_watchdog()
        for key, result in zip(finished, results, strict=True):
            self._complete(key, self.members[key], result)

    # -- 5. dropping cancelled items
    def _drop_cancelled(self) -> None:
        if not self.members:
            return
        by_id = {m.job.id: key for key, m in self.members.items()}
        cancelled = [by_id[i] for i in self.worker.store.is_cancel_requested(list(by_id))]
        if not cancelled:
            return
        self.pipe.drop(self.state, cancelled)
        for key in cancelled:
            self.ctx.log("Cancelled: left the batch at a step boundary", key)
            self._complete(key, self.members[key], CANCELLED_ERROR)

    # -- completion
    def _complete(self, key: int, member: Member, outcome: Any) -> None:
        metrics = {
            "inference_time": round(time.monotonic() - member.admitted, 6),
            "queue_time": round(max(0.0, member.started_at - member.job.created_at), 6),
            "batch_size": max(1, member.peak_items),
            "steps": member.steps,
        }
        if member.first_step_at is not None:
            metrics["admission_wait"] = round(max(0.0, member.first_step_at - member.job.created_at), 6)
        self.members.pop(key, None)
        logs = self.ctx.take_logs({member.job.id})
        self.ctx.remove(key)
        if not self.members:
            self.state = None
        self._finish_job(member.job, outcome, metrics, logs)

    def _finish_job(
        self, job: Job, outcome: Any, metrics: dict[str, Any], logs: list[tuple[str, LogEntry]] | None = None
    ) -> None:
        self.worker._complete_all([(job, outcome, metrics)], logs or [])
        self.worker._forget([job.id])
