"""PostgreSQL job store: the JobStore contract for many hosts (API replicas and workers on one database).

psycopg 3 with a connection pool. Every state change is a conditional UPDATE inside one transaction, as
in the SQLite store; claims lock their candidate rows with ``FOR UPDATE SKIP LOCKED``, so concurrent
workers never wait for each other and never take the same job. Times are the callers' epoch seconds
(as in SQLite), so one host's clock decides a lease it wrote; hosts should run NTP.

The schema is versioned (``server/store/migrations.py``) and brought up to date at open, under an
advisory lock so that replicas starting together apply each migration once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal

from server.store.base import (
    CANCELLED_ERROR,
    HISTOGRAM_BUCKETS,
    JOB_INSERT_COLUMNS,
    PRIORITY_RANK,
    TIMEOUT_ERROR,
    CancelOutcome,
    Completion,
    Job,
    LogEntry,
    PipelineState,
    SingleJobCalls,
    WebhookDelivery,
    head_batch,
    job_insert_values,
    runner_disconnected_error,
    within_key_cap,
)
from server.store.migrations import ADVISORY_LOCK, upgrade
from server.store.notify import DONE, JOBS, LOG, QUEUE, STARTED, STATES, WEBHOOK
from server.store.pg_notify import PostgresNotifier, pg_channel

_JOB_COLUMNS = (
    "id, endpoint, input, status, priority, key_id, base_url, created_at, started_at, finished_at, "
    "start_deadline, webhook_url, attempts, cancel_requested, worker_id, result, error, metrics"
)


def _job(row: dict[str, Any]) -> Job:
    return Job(
        id=row["id"],
        endpoint=row["endpoint"],
        input=row["input"],
        status=row["status"],
        priority=row["priority"],
        key_id=row["key_id"],
        base_url=row["base_url"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        start_deadline=row["start_deadline"],
        webhook_url=row["webhook_url"],
        attempts=row["attempts"],
        cancel_requested=row["cancel_requested"],
        worker_id=row["worker_id"],
        result=row["result"],
        error=row["error"],
        metrics=row["metrics"] or {},
    )


def _webhook(row: dict[str, Any]) -> WebhookDelivery:
    return WebhookDelivery(
        job_id=row["job_id"],
        url=row["url"],
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_status=row["last_status"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        delivered_at=row["delivered_at"],
    )


_ENQUEUE_WEBHOOK = (
    "INSERT INTO webhooks (job_id, url, state, next_attempt_at, created_at) "
    "SELECT id, webhook_url, 'pending', %(now)s, %(now)s FROM jobs WHERE id = ANY(%(ids)s) "
    "AND webhook_url IS NOT NULL ON CONFLICT (job_id) DO NOTHING RETURNING job_id"
)


def _finished(conn: Any, ids: list[str], now: float) -> list[tuple[str, str]]:
    """Owe the webhooks of jobs that just completed (inside the completing transaction); returns the
    notifications: each job is done, and a webhook is due for those that have one."""
    if not ids:
        return []
    owed = [r["job_id"] for r in conn.execute(_ENQUEUE_WEBHOOK, {"now": now, "ids": ids}).fetchall()]
    return [(JOBS, f"{i} {DONE}") for i in ids] + [(JOBS, f"{i} {WEBHOOK}") for i in owed]


def _insert_logs(conn: Any, entries: Sequence[tuple[str, LogEntry]]) -> None:
    if entries:
        conn.execute(
            "INSERT INTO logs (job_id, message, level, source, timestamp) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[])",
            (
                [j for j, _ in entries],
                [e.message for _, e in entries],
                [e.level for _, e in entries],
                [e.source for _, e in entries],
                [e.timestamp for _, e in entries],
            ),
        )


def _notify(conn: Any, notes: list[tuple[str, str]]) -> None:
    """NOTIFY inside the transaction: delivered when it commits, never for a rolled-back change."""
    if notes:
        conn.execute(
            "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS t(c, p)",
            ([pg_channel(c) for c, _ in notes], [p for _, p in notes]),
        )


def _recover(conn: Any, rows: list[dict[str, Any]], max_attempts: int, now: float, unstarted_free: bool) -> None:
    """Re-queue the given (locked) IN_PROGRESS jobs of a dead worker while attempts remain, else fail them;
    with ``unstarted_free`` a claimed job that never started is re-queued whatever its attempts. Notifies."""
    from psycopg.types.json import Jsonb

    def retry(r: dict[str, Any]) -> bool:
        return r["attempts"] < max_attempts or (unstarted_free and r["started_at"] is None)

    requeue = [r["id"] for r in rows if retry(r)]
    give_up = [r["id"] for r in rows if not retry(r)]
    if requeue:
        conn.execute(
            "UPDATE jobs SET status = 'IN_QUEUE', worker_id = NULL, lease_until = NULL, started_at = NULL "
            "WHERE id = ANY(%s)",
            (requeue,),
        )
    if give_up:
        conn.execute(
            "UPDATE jobs SET status = 'COMPLETED', finished_at = %s, error = %s, lease_until = NULL WHERE id = ANY(%s)",
            (now, Jsonb(runner_disconnected_error(max_attempts)), give_up),
        )
    endpoints = dict.fromkeys(r["endpoint"] for r in rows if retry(r))
    _notify(conn, [(QUEUE, e) for e in endpoints] + _finished(conn, give_up, now))


# How long a call waits for a connection while the database is unreachable before it raises (the API then
# answers 503 with Retry-After; a worker retries): about a restart's length, far below a client's timeout.
POOL_TIMEOUT_S = 5.0
# The pool's reconnect attempts back off (1, 2, 4 s ...) for this long, then give up until the next call:
# so the first attempt after the database is back is at most a few seconds away, whatever the outage.
POOL_RECONNECT_S = 10.0


class PostgresJobStore(SingleJobCalls):
    local = False  # every call is a network round trip: the API calls it from threads
    transient_errors: tuple[type[Exception], ...] = ()  # set in __init__ (psycopg is imported lazily)

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 8, clock: Callable[[], float] = time.time
    ) -> None:
        """``clock`` (wall-clock seconds) stamps leases, deadlines and webhooks; tests pass a fake one."""
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.transient_errors = (psycopg.OperationalError,)  # lost connections, shutdowns, pool timeouts

        self.url = url
        self.clock = clock
        upgrade(url)
        # check: a connection is tested when taken from the pool, so a database restart costs the callers
        # of that moment an error, not every pooled connection one failure later
        self.pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row},
            check=ConnectionPool.check_connection,
            timeout=POOL_TIMEOUT_S,
            reconnect_timeout=POOL_RECONNECT_S,
            open=True,
            name="fal-onprem",
        )
        self.events = PostgresNotifier(url, self.pool)
        self._init_counters()

    @classmethod
    def from_url(cls, url: str) -> PostgresJobStore:
        return cls(url)

    def _rows(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Any = None) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            return conn.execute(sql, params).fetchone()

    def close(self) -> None:
        self.pool.close()
        self.events.close()

    # -- API side
    def create(self, job: Job) -> None:
        self.create_many([job])

    def create_many(self, jobs: Sequence[Job]) -> None:
        from psycopg.types.json import Jsonb

        with self.pool.connection() as conn:
            for job in jobs:
                conn.execute(
                    f"INSERT INTO jobs ({JOB_INSERT_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                    job_insert_values(job, Jsonb),
                )
            _notify(conn, [(QUEUE, endpoint) for endpoint in dict.fromkeys(job.endpoint for job in jobs)])

    def try_create(self, jobs: Sequence[Job]) -> bool:
        return False  # never without waiting (local is False: the API does not call this)

    def get(self, job_id: str) -> Job | None:
        row = self._one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
        return _job(row) if row else None

    def queue_position(self, job: Job) -> int:
        rank = PRIORITY_RANK[job.priority]
        row = self._one(
            "SELECT COUNT(*) AS n FROM jobs WHERE endpoint = %s AND status = 'IN_QUEUE' AND "
            "(priority_rank < %s OR (priority_rank = %s AND created_at < %s))",
            (job.endpoint, rank, rank, job.created_at),
        )
        return int(row["n"]) if row else 0

    def request_cancel(self, job_id: str) -> CancelOutcome:
        from psycopg.types.json import Jsonb

        now = self.clock()
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT status FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
            if row is None:
                return "NOT_FOUND"
            if row["status"] == "COMPLETED":
                return "ALREADY_COMPLETED"
            if row["status"] == "IN_QUEUE":
                conn.execute(
                    "UPDATE jobs SET status = 'COMPLETED', cancel_requested = TRUE, error = %s, finished_at = %s "
                    "WHERE id = %s",
                    (Jsonb(CANCELLED_ERROR), now, job_id),
                )
                _notify(conn, _finished(conn, [job_id], now))
            else:
                conn.execute("UPDATE jobs SET cancel_requested = TRUE WHERE id = %s", (job_id,))
        return "CANCELLATION_REQUESTED"

    def logs(self, job_id: str, since: int = 0) -> list[LogEntry]:
        rows = self._rows(
            "SELECT message, level, source, timestamp FROM logs WHERE job_id = %s ORDER BY seq OFFSET %s",
            (job_id, since),
        )
        return [LogEntry(r["message"], r["level"], r["source"], r["timestamp"]) for r in rows]

    def queue_depths(self) -> dict[str, int]:
        rows = self._rows("SELECT endpoint, COUNT(*) AS n FROM jobs WHERE status = 'IN_QUEUE' GROUP BY endpoint")
        return {r["endpoint"]: int(r["n"]) for r in rows}

    def pipeline_states(self) -> list[PipelineState]:
        rows = self._rows("SELECT * FROM pipeline_states")
        return [
            PipelineState(r["endpoint"], r["worker_id"], r["state"], r["reason"], r["device"], r["updated_at"])
            for r in rows
        ]

    def _init_counters(self) -> None:
        """Register the histogram buckets; a database that has jobs from before the counters (migration 3)
        is counted once from them, with completions held off meanwhile (SHARE lock on jobs)."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
            conn.cursor().executemany(
                "INSERT INTO histogram_buckets (name, le) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                [(name, float(le)) for name, buckets in HISTOGRAM_BUCKETS.items() for le in buckets],
            )
            if conn.execute("SELECT 1 FROM store_meta WHERE key = 'counters'").fetchone():
                return
            conn.execute("LOCK TABLE jobs IN SHARE MODE")
            conn.execute("DELETE FROM completed_counts; DELETE FROM histogram_sums; DELETE FROM histogram_counts")
            conn.execute(
                "INSERT INTO completed_counts (endpoint, error_type, n) SELECT endpoint, "
                "COALESCE(error->>'error_type', ''), COUNT(*) FROM jobs WHERE status = 'COMPLETED' GROUP BY 1, 2"
            )
            conn.execute(
                "INSERT INTO histogram_sums (name, endpoint, total, n) SELECT b.name, j.endpoint, "
                "SUM((j.metrics->>b.name)::float8), COUNT(*) FROM jobs j, (SELECT DISTINCT name FROM "
                "histogram_buckets) b WHERE j.status = 'COMPLETED' AND jsonb_typeof(j.metrics->b.name) = 'number' "
                "GROUP BY 1, 2"
            )
            conn.execute(
                "INSERT INTO histogram_counts (name, endpoint, le, n) SELECT b.name, j.endpoint, b.le, COUNT(*) "
                "FROM jobs j, histogram_buckets b WHERE j.status = 'COMPLETED' "
                "AND jsonb_typeof(j.metrics->b.name) = 'number' AND (j.metrics->>b.name)::float8 <= b.le "
                "GROUP BY 1, 2, 3"
            )
            conn.execute("INSERT INTO store_meta (key, value) VALUES ('counters', '1')")

    def completed_stats(self) -> list[dict[str, Any]]:
        """Per-endpoint counts of finished jobs by error type ('' = success), from counters."""
        return self._rows("SELECT endpoint, error_type, n FROM completed_counts")

    def metric_histogram(self, name: str, buckets: tuple[float, ...]) -> list[tuple[str, list[int], float, int]]:
        """See ``JobStore.metric_histogram`` (counters; ``buckets`` must be ``HISTOGRAM_BUCKETS[name]``)."""
        counts = {
            (r["endpoint"], float(r["le"])): int(r["n"])
            for r in self._rows("SELECT endpoint, le, n FROM histogram_counts WHERE name = %s", (name,))
        }
        return [
            (r["endpoint"], [counts.get((r["endpoint"], float(b)), 0) for b in buckets], float(r["total"]), int(r["n"]))
            for r in self._rows("SELECT endpoint, total, n FROM histogram_sums WHERE name = %s", (name,))
        ]

    def purge_finished(self, finished_before: float, limit: int = 1000) -> int:
        """See ``JobStore.purge_finished``."""
        with self.pool.connection() as conn, conn.transaction():
            ids = [
                r["id"]
                for r in conn.execute(
                    "SELECT id FROM jobs WHERE status = 'COMPLETED' AND finished_at < %s AND NOT EXISTS "
                    "(SELECT 1 FROM webhooks w WHERE w.job_id = jobs.id AND w.state = 'pending') "
                    "LIMIT %s FOR UPDATE SKIP LOCKED",
                    (finished_before, limit),
                )
            ]
            if ids:
                conn.execute("DELETE FROM logs WHERE job_id = ANY(%s)", (ids,))
                conn.execute("DELETE FROM webhooks WHERE job_id = ANY(%s)", (ids,))
                conn.execute("DELETE FROM jobs WHERE id = ANY(%s)", (ids,))
        return len(ids)

    def set_worker_stats(self, worker_id: str, device: str, allocated: int | None, reserved: int | None) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO worker_stats VALUES (%s,%s,%s,%s,%s) ON CONFLICT (worker_id) DO UPDATE SET "
                "device = EXCLUDED.device, gpu_memory_allocated = EXCLUDED.gpu_memory_allocated, "
                "gpu_memory_reserved = EXCLUDED.gpu_memory_reserved, updated_at = EXCLUDED.updated_at",
                (worker_id, device, allocated, reserved, self.clock()),
            )

    def worker_stats(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM worker_stats")

    def set_worker_metrics(
        self,
        worker_id: str,
        gauges: dict[tuple[str, str], float],
        histograms: dict[tuple[str, str], tuple[list[int], float, int]],
    ) -> None:
        """A worker's own numbers by (metric name, endpoint): gauges replace; histograms are cumulative."""
        from psycopg.types.json import Jsonb

        now = self.clock()
        with self.pool.connection() as conn, conn.transaction():
            for (name, endpoint), value in gauges.items():
                conn.execute(
                    "INSERT INTO worker_gauges VALUES (%s,%s,%s,%s,%s) ON CONFLICT (worker_id, name, endpoint) "
                    "DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
                    (worker_id, name, endpoint, value, now),
                )
            for (name, endpoint), (counts, total, n) in histograms.items():
                conn.execute(
                    "INSERT INTO worker_histograms VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (worker_id, name, endpoint) "
                    "DO UPDATE SET counts = EXCLUDED.counts, total = EXCLUDED.total, n = EXCLUDED.n",
                    (worker_id, name, endpoint, Jsonb(counts), total, n),
                )

    def worker_gauges(self) -> list[tuple[str, str, str, float]]:
        rows = self._rows("SELECT worker_id, name, endpoint, value FROM worker_gauges")
        return [(r["worker_id"], r["name"], r["endpoint"], float(r["value"])) for r in rows]

    def worker_histograms(self, name: str) -> list[tuple[str, list[int], float, int]]:
        """Per endpoint: a worker-reported histogram summed over workers (dead ones' counts included)."""
        merged: dict[str, tuple[list[int], float, int]] = {}
        for r in self._rows("SELECT endpoint, counts, total, n FROM worker_histograms WHERE name = %s", (name,)):
            counts, prev = list(r["counts"]), merged.get(r["endpoint"])
            if prev is not None and len(prev[0]) == len(counts):
                counts = [a + b for a, b in zip(prev[0], counts, strict=True)]
            merged[r["endpoint"]] = (counts, (prev[1] if prev else 0.0) + r["total"], (prev[2] if prev else 0) + r["n"])
        return [(endpoint, *value) for endpoint, value in sorted(merged.items())]

    # -- worker side
    def queued_ids(self, endpoint: str, limit: int) -> list[str]:
        rows = self._rows(
            "SELECT id FROM jobs WHERE endpoint = %s AND status = 'IN_QUEUE' ORDER BY priority_rank, created_at "
            "LIMIT %s",
            (endpoint, limit),
        )
        return [r["id"] for r in rows]

    def queue_heads(self) -> dict[str, tuple[float, int]]:
        rows = self._rows(
            "SELECT endpoint, MIN(created_at) AS oldest, COUNT(*) AS n FROM jobs WHERE status = 'IN_QUEUE' "
            "GROUP BY endpoint"
        )
        return {r["endpoint"]: (r["oldest"], int(r["n"])) for r in rows}

    def claim_batch(
        self,
        endpoint: str,
        worker_id: str,
        key_fn: Callable[[dict[str, Any]], Hashable],
        max_batch: int,
        lease_s: float,
        key: Hashable | None = None,
        max_running_per_key: int | None = None,
    ) -> list[Job]:
        """The head of the queue plus up to ``max_batch - 1`` jobs with its batch key, in one transaction.

        Candidates are locked with SKIP LOCKED (rows another worker is claiming are passed over, never
        waited for); those not chosen are unlocked at commit. Order: (priority, created). With
        ``max_running_per_key``, claims of the endpoint take turns (an advisory lock) so that two workers
        cannot both start a key's last allowed job.
        """
        now = self.clock()
        with self.pool.connection() as conn, conn.transaction():
            if max_running_per_key is not None:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"claim:{endpoint}",))
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE endpoint = %s AND status = 'IN_QUEUE' "
                "AND (start_deadline IS NULL OR start_deadline >= %s OR attempts > 0) "
                "ORDER BY priority_rank, created_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (endpoint, now, max(64, max_batch * 8)),
            ).fetchall()
            jobs = (_job(r) for r in rows)  # converted only as far as the batch needs
            if max_running_per_key is not None:
                running = conn.execute(
                    "SELECT key_id, COUNT(*) AS n FROM jobs WHERE status = 'IN_PROGRESS' AND key_id IS NOT NULL "
                    "GROUP BY key_id"
                ).fetchall()
                jobs = within_key_cap(jobs, {r["key_id"]: r["n"] for r in running}, max_running_per_key)
            chosen = head_batch(jobs, key_fn, max_batch, key)
            if not chosen:
                return []
            conn.execute(
                "UPDATE jobs SET status = 'IN_PROGRESS', worker_id = %s, lease_until = %s WHERE id = ANY(%s)",
                (worker_id, now + lease_s, [j.id for j in chosen]),
            )
        for job in chosen:
            job.status, job.worker_id = "IN_PROGRESS", worker_id
        return chosen

    def start(self, job_ids: list[str], worker_id: str) -> list[str]:
        """Count the attempt and stamp ``started_at``; a job past its start deadline times out instead."""
        from psycopg.types.json import Jsonb

        if not job_ids:
            return []
        now = self.clock()
        with self.pool.connection() as conn, conn.transaction():
            late = conn.execute(
                "UPDATE jobs SET status = 'COMPLETED', finished_at = %s, error = %s, lease_until = NULL "
                "WHERE id = ANY(%s) AND status = 'IN_PROGRESS' AND worker_id = %s AND start_deadline < %s "
                "AND attempts = 0 RETURNING id",
                (now, Jsonb(TIMEOUT_ERROR), job_ids, worker_id, now),
            ).fetchall()
            notes = _finished(conn, [r["id"] for r in late], now)
            started = conn.execute(
                "UPDATE jobs SET started_at = %s, attempts = attempts + 1 WHERE id = ANY(%s) "
                "AND status = 'IN_PROGRESS' AND worker_id = %s RETURNING id",
                (now, job_ids, worker_id),
            ).fetchall()
            _notify(conn, notes + [(JOBS, f"{r['id']} {STARTED}") for r in started])
        ids = {r["id"] for r in started}
        return [j for j in job_ids if j in ids]

    def release(self, job_ids: list[str], worker_id: str) -> None:
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "UPDATE jobs SET status = 'IN_QUEUE', worker_id = NULL, lease_until = NULL "
                "WHERE id = ANY(%s) AND status = 'IN_PROGRESS' AND worker_id = %s AND started_at IS NULL "
                "RETURNING endpoint",
                (job_ids, worker_id),
            ).fetchall()
            _notify(conn, [(QUEUE, e) for e in dict.fromkeys(r["endpoint"] for r in rows)])

    def heartbeat(self, job_ids: list[str], lease_s: float, worker_id: str | None = None) -> None:
        if not job_ids:
            return
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE jobs SET lease_until = %s WHERE status = 'IN_PROGRESS' AND id = ANY(%s) "
                "AND (%s::text IS NULL OR worker_id = %s)",
                (self.clock() + lease_s, job_ids, worker_id, worker_id),
            )

    def append_logs(self, entries: list[tuple[str, LogEntry]]) -> None:
        if not entries:
            return
        with self.pool.connection() as conn, conn.transaction():
            _insert_logs(conn, entries)
            _notify(conn, [(JOBS, f"{job_id} {LOG}") for job_id in dict.fromkeys(j for j, _ in entries)])

    def is_cancel_requested(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        rows = self._rows("SELECT id FROM jobs WHERE cancel_requested AND id = ANY(%s)", (job_ids,))
        return {r["id"] for r in rows}

    def complete_many(
        self, completions: list[Completion], worker_id: str | None = None, logs: Sequence[tuple[str, LogEntry]] = ()
    ) -> list[str]:
        """See ``JobStore.complete_many``: one UPDATE for all of them."""
        from psycopg.types.json import Jsonb

        now = self.clock()
        with self.pool.connection() as conn, conn.transaction():
            _insert_logs(conn, logs)
            rows = conn.execute(
                "UPDATE jobs SET status = 'COMPLETED', finished_at = %s, result = c.result, error = c.error, "
                "metrics = c.metrics, lease_until = NULL FROM unnest(%s::text[], %s::jsonb[], %s::jsonb[], "
                "%s::jsonb[]) AS c(id, result, error, metrics) WHERE jobs.id = c.id AND jobs.status = 'IN_PROGRESS' "
                "AND (%s::text IS NULL OR jobs.worker_id = %s) RETURNING jobs.id",
                (
                    now,
                    [c.job_id for c in completions],
                    [None if c.result is None else Jsonb(c.result) for c in completions],
                    [None if c.error is None else Jsonb(c.error) for c in completions],
                    [Jsonb(c.metrics) for c in completions],
                    worker_id,
                    worker_id,
                ),
            ).fetchall()
            done = {r["id"] for r in rows}
            logged = dict.fromkeys(job_id for job_id, _ in logs if job_id not in done)
            _notify(conn, _finished(conn, sorted(done), now) + [(JOBS, f"{j} {LOG}") for j in logged])
        return [c.job_id for c in completions if c.job_id in done]

    def expire_deadlines(self, now: float | None = None) -> list[str]:
        now = self.clock() if now is None else now
        return self._fail_queued_where(
            "attempts = 0 AND start_deadline IS NOT NULL AND start_deadline < %s", TIMEOUT_ERROR, now, now=now
        )

    def _fail_queued_where(self, condition: str, error: dict[str, Any], *params: Any, now: float | None) -> list[str]:
        """Complete the queued jobs matching ``condition`` with ``error``, owing their webhooks."""
        from psycopg.types.json import Jsonb

        now = self.clock() if now is None else now
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "UPDATE jobs SET status = 'COMPLETED', finished_at = %s, error = %s "
                f"WHERE status = 'IN_QUEUE' AND {condition} RETURNING id",
                (now, Jsonb(error), *params),
            ).fetchall()
            ids = [r["id"] for r in rows]
            _notify(conn, _finished(conn, ids, now))
        return ids

    def recover_expired_leases(self, max_attempts: int, now: float | None = None) -> list[str]:
        """Jobs of a dead worker (lease expired): re-queue if attempts remain, else fail them."""
        now = self.clock() if now is None else now
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT id, endpoint, attempts, started_at FROM jobs WHERE status = 'IN_PROGRESS' "
                "AND lease_until < %s FOR UPDATE SKIP LOCKED",
                (now,),
            ).fetchall()
            _recover(conn, rows, max_attempts, now, unstarted_free=False)
        return [r["id"] for r in rows]

    def release_dead_worker(self, worker_id: str, max_attempts: int) -> list[str]:
        """See ``JobStore.release_dead_worker``: a dead worker's jobs are recovered now, not after the lease."""
        now = self.clock()
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT id, endpoint, attempts, started_at FROM jobs WHERE status = 'IN_PROGRESS' "
                "AND worker_id = %s FOR UPDATE",
                (worker_id,),
            ).fetchall()
            _recover(conn, rows, max_attempts, now, unstarted_free=True)
            conn.execute("DELETE FROM pipeline_states WHERE worker_id = %s", (worker_id,))
        return [r["id"] for r in rows]

    def fail_queued(self, endpoint: str, error: dict[str, Any]) -> list[str]:
        """See ``JobStore.fail_queued``."""
        return self._fail_queued_where("endpoint = %s", error, endpoint, now=None)

    def set_pipeline_state(self, state: PipelineState) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO pipeline_states VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (endpoint, worker_id) DO UPDATE "
                "SET state = EXCLUDED.state, reason = EXCLUDED.reason, device = EXCLUDED.device, "
                "updated_at = EXCLUDED.updated_at",
                (state.endpoint, state.worker_id, state.state, state.reason, state.device, state.updated_at),
            )
            _notify(conn, [(JOBS, STATES)])

    def clear_pipeline_states(self, worker_id: str) -> None:
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM pipeline_states WHERE worker_id = %s", (worker_id,))
            _notify(conn, [(JOBS, STATES)])

    # -- webhook outbox
    def claim_webhooks(self, owner: str, limit: int, lease_s: float, now: float | None = None) -> list[WebhookDelivery]:
        now = self.clock() if now is None else now
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "UPDATE webhooks SET owner = %s, lease_until = %s WHERE job_id IN (SELECT job_id FROM webhooks "
                "WHERE state = 'pending' AND next_attempt_at <= %s AND (lease_until IS NULL OR lease_until < %s) "
                "ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING *",
                (owner, now + lease_s, now, now, limit),
            ).fetchall()
        return sorted((_webhook(r) for r in rows), key=lambda w: w.next_attempt_at)

    def record_webhook_attempt(
        self,
        job_id: str,
        owner: str,
        outcome: Literal["delivered", "retry", "failed"],
        *,
        status_code: int | None = None,
        error: str | None = None,
        next_attempt_at: float | None = None,
    ) -> bool:
        now = self.clock()
        state = "pending" if outcome == "retry" else outcome
        with self.pool.connection() as conn:
            cur = conn.execute(
                "UPDATE webhooks SET state = %s, attempts = attempts + 1, last_status = %s, last_error = %s, "
                "next_attempt_at = COALESCE(%s, next_attempt_at), delivered_at = %s, owner = NULL, "
                "lease_until = NULL WHERE job_id = %s AND owner = %s AND state = 'pending'",
                (state, status_code, error, next_attempt_at, now if outcome == "delivered" else None, job_id, owner),
            )
            return cur.rowcount == 1

    def release_webhooks(self, owner: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE webhooks SET owner = NULL, lease_until = NULL WHERE owner = %s AND state = 'pending'", (owner,)
            )

    def webhook(self, job_id: str) -> WebhookDelivery | None:
        row = self._one("SELECT * FROM webhooks WHERE job_id = %s", (job_id,))
        return _webhook(row) if row else None
