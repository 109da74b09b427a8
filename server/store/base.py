"""The job store contract (ARCHITECTURE.md §3): one record per request, shared by API and workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from server.store.notify import Notifier

Status = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
Priority = Literal["normal", "low"]
PRIORITY_RANK: dict[str, int] = {"normal": 0, "low": 1}

CancelOutcome = Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]


@dataclass
class Job:
    id: str
    endpoint: str
    input: dict[str, Any]
    status: Status = "IN_QUEUE"
    priority: Priority = "normal"
    key_id: str | None = None
    base_url: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    start_deadline: float | None = None
    webhook_url: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    worker_id: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # {status_code, detail, error_type}
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def app(self) -> str:
        """``owner/alias``: the part of the endpoint id used in request URLs."""
        return "/".join(self.endpoint.split("/")[:2])


@dataclass
class LogEntry:
    message: str
    level: str = "INFO"
    source: str = "USER"
    timestamp: float = field(default_factory=time.time)


WebhookState = Literal["pending", "delivered", "failed"]


@dataclass
class WebhookDelivery:
    """One outbox row: the webhook owed for a finished job (recorded in the completion's transaction)."""

    job_id: str
    url: str
    state: WebhookState = "pending"
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_status: int | None = None
    last_error: str | None = None
    created_at: float = field(default_factory=time.time)
    delivered_at: float | None = None


JOB_INSERT_COLUMNS = (
    "id, endpoint, input, status, priority, priority_rank, key_id, base_url, created_at, start_deadline, "
    "webhook_url, metrics"
)


def job_insert_values(job: Job, as_json: Callable[[Any], Any]) -> tuple[Any, ...]:
    """A new job's values in ``JOB_INSERT_COLUMNS`` order; ``as_json`` wraps its JSON fields for the driver."""
    return (
        job.id,
        job.endpoint,
        as_json(job.input),
        job.status,
        job.priority,
        PRIORITY_RANK[job.priority],
        job.key_id,
        job.base_url,
        job.created_at,
        job.start_deadline,
        job.webhook_url,
        as_json(job.metrics),
    )


@dataclass
class Completion:
    """How one running job ended: a result or an error (``complete_many`` writes several at once)."""

    job_id: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineState:
    endpoint: str
    worker_id: str
    state: Literal["loading", "ready", "standby", "failed"]  # standby: not resident, loads when a job needs it
    reason: str = ""
    device: str = ""
    updated_at: float = field(default_factory=time.time)


SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
HISTOGRAM_BUCKETS: dict[str, tuple[float, ...]] = {
    "queue_time": SECONDS_BUCKETS,
    "inference_time": SECONDS_BUCKETS,
    "batch_size": BATCH_BUCKETS,
    "admission_wait": SECONDS_BUCKETS,
}
"""The ``Job.metrics`` fields a store keeps histograms of, counted as jobs complete (``metric_histogram``)."""


class SingleJobCalls:
    """The one-job forms of the batch writes, shared by the stores."""

    def append_log(self, job_id: str, entry: LogEntry) -> None:
        self.append_logs([(job_id, entry)])  # type: ignore[attr-defined]

    def complete(
        self,
        job_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> bool:
        completions = [Completion(job_id, result, error, metrics or {})]
        return bool(self.complete_many(completions, worker_id))  # type: ignore[attr-defined]


class JobStore(Protocol):
    """Safe for concurrent use by the API process and several worker processes."""

    events: Notifier  # publishes server.store.notify's channels after each relevant commit
    # True when reads answer from this host without waiting on the network or on a writer (SQLite in WAL
    # mode): the API may then read, and ``try_create``, on its event loop instead of in a thread.
    local: bool
    # What this store raises while its database is unreachable or busy (a restart, a failover, a long lock):
    # worth retrying, not a bug (server.store.retrying; the API answers them with a 503).
    transient_errors: tuple[type[Exception], ...]

    # -- API side
    def create(self, job: Job) -> None: ...
    def create_many(self, jobs: Sequence[Job]) -> None:
        """Every job in one transaction (all or none)."""
        ...

    def try_create(self, jobs: Sequence[Job]) -> bool:
        """``create_many`` only if the database's write lock is free within a moment (another writer's short
        transaction is waited out, a long one is not); False otherwise, nothing written."""
        ...

    def get(self, job_id: str) -> Job | None: ...
    def queue_position(self, job: Job) -> int: ...
    def request_cancel(self, job_id: str) -> CancelOutcome: ...
    def logs(self, job_id: str, since: int = 0) -> list[LogEntry]: ...
    def queue_depths(self) -> dict[str, int]: ...
    def pipeline_states(self) -> list[PipelineState]: ...

    # -- worker side
    def claim_batch(
        self,
        endpoint: str,
        worker_id: str,
        key_fn: Callable[[dict[str, Any]], Hashable],
        max_batch: int,
        lease_s: float,
        key: Hashable | None = None,
        max_running_per_key: int | None = None,
    ) -> list[Job]: ...
    def queued_ids(self, endpoint: str, limit: int) -> list[str]: ...
    def queue_heads(self) -> dict[str, tuple[float, int]]:
        """Per endpoint with queued jobs: (created_at of its oldest queued job, how many are queued)."""
        ...

    def start(self, job_ids: list[str], worker_id: str) -> list[str]: ...
    def release(self, job_ids: list[str], worker_id: str) -> None: ...
    def heartbeat(self, job_ids: list[str], lease_s: float, worker_id: str | None = None) -> None: ...
    def append_log(self, job_id: str, entry: LogEntry) -> None: ...
    def append_logs(self, entries: list[tuple[str, LogEntry]]) -> None:
        """Log lines of any jobs, (job id, entry) in order, in one transaction."""
        ...

    def is_cancel_requested(self, job_ids: list[str]) -> set[str]: ...
    def complete(
        self,
        job_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> bool:
        """``complete_many`` of one job: True when it was completed now."""
        ...

    def complete_many(
        self, completions: list[Completion], worker_id: str | None = None, logs: Sequence[tuple[str, LogEntry]] = ()
    ) -> list[str]:
        """Finish running jobs and owe their webhooks, with ``logs`` (written first), in one transaction.

        A job no longer IN_PROGRESS (or, given ``worker_id``, no longer that worker's: a stalled worker must
        not overwrite the run that replaced it) is left alone. Returns the ids completed now."""
        ...

    def expire_deadlines(self, now: float | None = None) -> list[str]: ...
    def recover_expired_leases(self, max_attempts: int, now: float | None = None) -> list[str]: ...
    def fail_queued(self, endpoint: str, error: dict[str, Any]) -> list[str]:
        """Complete every IN_QUEUE job of ``endpoint`` with ``error`` (and owe their webhooks): used when no
        live worker can serve the endpoint, so its jobs do not wait forever. Returns their ids."""
        ...

    def release_dead_worker(self, worker_id: str, max_attempts: int) -> list[str]:
        """Recover the jobs of a worker known to be dead (its supervisor saw the process exit) at once,
        instead of when their leases run out. Same rules as ``recover_expired_leases``: a started job is
        re-queued while attempts remain, else completed with the ``runner_disconnected`` 500; a claimed
        job that never started goes back to the queue without spending an attempt. The worker's pipeline
        states are dropped too. Returns the ids of the jobs it recovered."""
        ...

    def set_pipeline_state(self, state: PipelineState) -> None: ...
    def clear_pipeline_states(self, worker_id: str) -> None: ...
    def set_worker_stats(self, worker_id: str, device: str, allocated: int | None, reserved: int | None) -> None: ...

    # -- metrics: kept in counters updated as jobs complete, so a scrape costs the same after a million jobs
    # and purged jobs stay counted
    def completed_stats(self) -> list[Any]:
        """Rows of (endpoint, error_type ('' = success), n) over every job ever completed."""
        ...

    def metric_histogram(self, name: str, buckets: tuple[float, ...]) -> list[tuple[str, list[int], float, int]]:
        """Per endpoint: cumulative counts for ``buckets`` (those of ``HISTOGRAM_BUCKETS[name]``), sum, count."""
        ...

    def purge_finished(self, finished_before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` COMPLETED jobs that finished before ``finished_before``, with their log lines
        and finished webhook rows; a job whose webhook is still pending is kept until it is delivered or given
        up. Counters (``completed_stats``, ``metric_histogram``) are unchanged. Returns the jobs deleted."""
        ...

    def worker_stats(self) -> list[Any]: ...
    def set_worker_metrics(
        self,
        worker_id: str,
        gauges: dict[tuple[str, str], float],
        histograms: dict[tuple[str, str], tuple[list[int], float, int]],
    ) -> None: ...
    def worker_gauges(self) -> list[tuple[str, str, str, float]]: ...
    def worker_histograms(self, name: str) -> list[tuple[str, list[int], float, int]]: ...
    def close(self) -> None: ...

    # -- webhook outbox (rows are added by whatever completes a job that has a webhook_url)
    def claim_webhooks(
        self, owner: str, limit: int, lease_s: float, now: float | None = None
    ) -> list[WebhookDelivery]: ...
    def record_webhook_attempt(
        self,
        job_id: str,
        owner: str,
        outcome: Literal["delivered", "retry", "failed"],
        *,
        status_code: int | None = None,
        error: str | None = None,
        next_attempt_at: float | None = None,
    ) -> bool: ...
    def release_webhooks(self, owner: str) -> None: ...
    def webhook(self, job_id: str) -> WebhookDelivery | None: ...


CANCELLED_ERROR = {"status_code": 400, "detail": "Request was cancelled", "error_type": "request_cancelled"}
TIMEOUT_ERROR = {
    "status_code": 504,
    "detail": "Request timed out before it started (X-Fal-Request-Timeout)",
    "error_type": "request_timeout",
}


def runner_disconnected_error(max_attempts: int) -> dict[str, Any]:
    """The error of a job whose worker died ``max_attempts`` times while running it.

    500, not fal's 503: the job is over, and both clients would re-submit a run on a 503, re-running the
    input that just killed the worker."""
    return {
        "status_code": 500,
        "detail": f"The worker running this request stopped responding {max_attempts} times; giving up",
        "error_type": "runner_disconnected",
    }


def within_key_cap(queued: Iterable[Job], running: dict[str, int], cap: int) -> Iterator[Job]:
    """The queued jobs (in queue order) that may start without any API key exceeding ``cap`` running jobs."""
    counts = dict(running)
    for job in queued:
        if job.key_id is not None:
            if counts.get(job.key_id, 0) >= cap:
                continue
            counts[job.key_id] = counts.get(job.key_id, 0) + 1
        yield job


def head_batch(
    queued: Iterable[Job], key_fn: Callable[[dict[str, Any]], Hashable], max_batch: int, key: Hashable | None = None
) -> list[Job]:
    """The first queued job plus the following ones with its batch key, up to ``max_batch``.

    ``queued`` is consumed lazily, only until the batch is full (a key costs an input validation).
    With ``key`` (joining a running stepwise batch), nothing unless the head has that key: claiming around
    the head would starve it."""
    chosen: list[Job] = []
    head_key: Hashable = None
    for job in queued:
        if not chosen:
            head_key = key_fn(job.input)
            if key is not None and head_key != key:
                return []
        elif key_fn(job.input) != head_key:
            continue
        chosen.append(job)
        if len(chosen) >= max_batch:
            break
    return chosen
