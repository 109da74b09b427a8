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
from collections.abc import Callable, Hashable
from typing import Any, Literal

from server.store.base import (
    CANCELLED_ERROR,
    PRIORITY_RANK,
    TIMEOUT_ERROR,
    CancelOutcome,
    Job,
    LogEntry,
    PipelineState,
    WebhookDelivery,
    head_batch,
    runner_disconnected_error,
    within_key_cap,
)
from server.store.migrations import upgrade
from server.store.notify import DONE, JOBS, LOG, QUEUE, STARTED, WEBHOOK
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


def _notify(conn: Any, notes: list[tuple[str, str]]) -> None:
    """NOTIFY inside the transaction: delivered when it commits, never for a rolled-back change."""
    if notes:
        conn.execute(
            "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS t(c, p)",
            ([pg_channel(c) for c, _ in notes], [p for _, p in notes]),
        )


class PostgresJobStore:
    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 8, clock: Callable[[], float] = time.time
    ) -> None:
        """``clock`` (wall-clock seconds) stamps leases, deadlines and webhooks; tests pass a fake one."""
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

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
            open=True,
            name="fal-onprem",
        )
        self.events = PostgresNotifier(url, self.pool)

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
        from psycopg.types.json import Jsonb

        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO jobs (id, endpoint, input, status, priority, priority_rank, key_id, base_url, "
                "created_at, start_deadline, webhook_url, metrics) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (
                    job.id,
                    job.endpoint,
                    Jsonb(job.input),
                    job.status,
                    job.priority,
                    PRIORITY_RANK[job.priority],
                    job.key_id,
                    job.base_url,
                    job.created_at,
                    job.start_deadline,
                    job.webhook_url,
                    Jsonb(job.metrics),
                ),
            )
            _notify(conn, [(QUEUE, job.endpoint)])

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

    def completed_stats(self) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT endpoint, COALESCE(error->>'error_type', '') AS error_type, COUNT(*) AS n FROM jobs "
            "WHERE status = 'COMPLETED' GROUP BY endpoint, error_type"
        )

    def metric_histogram(self, name: str, buckets: tuple[float, ...]) -> list[tuple[str, list[int], float, int]]:
        cases = ", ".join(f"SUM(CASE WHEN v <= {float(b)!r} THEN 1 ELSE 0 END)" for b in buckets)
        with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=lambda c: tuple)  # positional rows
            rows = cur.execute(
                f"SELECT endpoint, {cases}, SUM(v), COUNT(v) FROM (SELECT endpoint, (metrics->>%s)::float8 AS v "
                "FROM jobs WHERE status = 'COMPLETED') m WHERE v IS NOT NULL GROUP BY endpoint",
                (name,),
            ).fetchall()
        return [(r[0], [int(c or 0) for c in r[1 : 1 + len(buckets)]], float(r[-2] or 0), int(r[-1])) for r in rows]

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

    def oldest_queued(self, endpoint: str) -> tuple[float | None, int]:
        row = self._one(
            "SELECT MIN(created_at) AS oldest, COUNT(*) AS n FROM jobs WHERE endpoint = %s AND status = 'IN_QUEUE'",
            (endpoint,),
        )
        assert row is not None
        return row["oldest"], int(row["n"])

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
            jobs = [_job(r) for r in rows]
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

    def append_log(self, job_id: str, entry: LogEntry) -> None:
        self.append_logs([job_id], entry)

    def append_logs(self, job_ids: list[str], entry: LogEntry) -> None:
        """The same line for several jobs (a batch-wide message), in one transaction."""
        if not job_ids:
            return
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO logs (job_id, message, level, source, timestamp) "
                "SELECT unnest(%s::text[]), %s, %s, %s, %s",
                (job_ids, entry.message, entry.level, entry.source, entry.timestamp),
            )
            _notify(conn, [(JOBS, f"{job_id} {LOG}") for job_id in job_ids])

    def is_cancel_requested(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        rows = self._rows("SELECT id FROM jobs WHERE cancel_requested AND id = ANY(%s)", (job_ids,))
        return {r["id"] for r in rows}

    def complete(
        self,
        job_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> bool:
        """Finish a running job (of ``worker_id`` when given) and owe its webhook, in one transaction."""
        from psycopg.types.json import Jsonb

        now = self.clock()
        with self.pool.connection() as conn, conn.transaction():
            cur = conn.execute(
                "UPDATE jobs SET status = 'COMPLETED', finished_at = %s, result = %s, error = %s, metrics = %s, "
                "lease_until = NULL WHERE id = %s AND status = 'IN_PROGRESS' AND (%s::text IS NULL OR worker_id = %s)",
                (
                    now,
                    None if result is None else Jsonb(result),
                    None if error is None else Jsonb(error),
                    Jsonb(metrics or {}),
                    job_id,
                    worker_id,
                    worker_id,
                ),
            )
            if cur.rowcount != 1:
                return False
            _notify(conn, _finished(conn, [job_id], now))
            return True

    def expire_deadlines(self, now: float | None = None) -> list[str]:
        from psycopg.types.json import Jsonb

        now = self.clock() if now is None else now
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "UPDATE jobs SET status = 'COMPLETED', finished_at = %s, error = %s WHERE status = 'IN_QUEUE' "
                "AND attempts = 0 AND start_deadline IS NOT NULL AND start_deadline < %s RETURNING id",
                (now, Jsonb(TIMEOUT_ERROR), now),
            ).fetchall()
            ids = [r["id"] for r in rows]
            _notify(conn, _finished(conn, ids, now))
        return ids

    def recover_expired_leases(self, max_attempts: int, now: float | None = None) -> list[str]:
        """Jobs of a dead worker (lease expired): re-queue if attempts remain, else fail them."""
        from psycopg.types.json import Jsonb

        now = self.clock() if now is None else now
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT id, endpoint, attempts FROM jobs WHERE status = 'IN_PROGRESS' AND lease_until < %s "
                "FOR UPDATE SKIP LOCKED",
                (now,),
            ).fetchall()
            retry = [r["id"] for r in rows if r["attempts"] < max_attempts]
            give_up = [r["id"] for r in rows if r["attempts"] >= max_attempts]
            if retry:
                conn.execute(
                    "UPDATE jobs SET status = 'IN_QUEUE', worker_id = NULL, lease_until = NULL, started_at = NULL "
                    "WHERE id = ANY(%s)",
                    (retry,),
                )
            if give_up:
                conn.execute(
                    "UPDATE jobs SET status = 'COMPLETED', finished_at = %s, error = %s, lease_until = NULL "
                    "WHERE id = ANY(%s)",
                    (now, Jsonb(runner_disconnected_error(max_attempts)), give_up),
                )
            requeued = dict.fromkeys(r["endpoint"] for r in rows if r["attempts"] < max_attempts)
            _notify(conn, [(QUEUE, e) for e in requeued] + _finished(conn, give_up, now))
        return [r["id"] for r in rows]

    def set_pipeline_state(self, state: PipelineState) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO pipeline_states VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (endpoint, worker_id) DO UPDATE "
                "SET state = EXCLUDED.state, reason = EXCLUDED.reason, device = EXCLUDED.device, "
                "updated_at = EXCLUDED.updated_at",
                (state.endpoint, state.worker_id, state.state, state.reason, state.device, state.updated_at),
            )

    def clear_pipeline_states(self, worker_id: str) -> None:
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM pipeline_states WHERE worker_id = %s", (worker_id,))

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
