"""SQLite job store: WAL mode, one connection per thread, write transactions via BEGIN IMMEDIATE.

Safe for the API process and several worker processes on one host. Every state change is a
single conditional UPDATE (``WHERE status = ...``), so a job can never be claimed twice or
completed twice, whoever races.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
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
from server.store.notify import DONE, JOBS, LOG, QUEUE, STARTED, STATES, WEBHOOK, LocalNotifier

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    input TEXT NOT NULL,
    status TEXT NOT NULL,
    priority TEXT NOT NULL,
    priority_rank INTEGER NOT NULL,
    key_id TEXT,
    base_url TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    start_deadline REAL,
    webhook_url TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_id TEXT,
    lease_until REAL,
    result TEXT,
    error TEXT,
    metrics TEXT NOT NULL DEFAULT '{}'
);
-- Partial indexes, one per status that is searched (as in the PostgreSQL schema): a job enters and leaves
-- each once, so a submit writes two index entries, not five (the old full indexes are dropped).
DROP INDEX IF EXISTS jobs_queue;
DROP INDEX IF EXISTS jobs_status;
DROP INDEX IF EXISTS jobs_heads;
DROP INDEX IF EXISTS jobs_finished;
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (endpoint, priority_rank, created_at) WHERE status = 'IN_QUEUE';
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (lease_until) WHERE status = 'IN_PROGRESS';
CREATE INDEX IF NOT EXISTS jobs_done ON jobs (finished_at) WHERE status = 'COMPLETED';
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    message TEXT NOT NULL,
    level TEXT NOT NULL,
    source TEXT NOT NULL,
    timestamp REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_job ON logs (job_id, seq);
CREATE TABLE IF NOT EXISTS pipeline_states (
    endpoint TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    device TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (endpoint, worker_id)
);
CREATE TABLE IF NOT EXISTS webhooks (
    job_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_until REAL,
    owner TEXT,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS completed_counts (
    endpoint TEXT NOT NULL,
    error_type TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (endpoint, error_type)
);
CREATE TABLE IF NOT EXISTS histogram_buckets (name TEXT NOT NULL, le REAL NOT NULL, PRIMARY KEY (name, le));
CREATE TABLE IF NOT EXISTS histogram_counts (
    name TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    le REAL NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (name, endpoint, le)
);
CREATE TABLE IF NOT EXISTS histogram_sums (
    name TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    total REAL NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (name, endpoint)
);
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS worker_stats (
    worker_id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    gpu_memory_allocated INTEGER,
    gpu_memory_reserved INTEGER,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS worker_gauges (
    worker_id TEXT NOT NULL,
    name TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    value REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (worker_id, name, endpoint)
);
CREATE TABLE IF NOT EXISTS worker_histograms (
    worker_id TEXT NOT NULL,
    name TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    counts TEXT NOT NULL,
    total REAL NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (worker_id, name, endpoint)
);
"""

_TRIGGER = "jobs_completed_counters"
COUNTERS_VERSION = "2"  # 1: a job counted in every bucket that holds it; 2: in the smallest only


def _counters_trigger() -> str:
    """The trigger that keeps the /metrics counters as jobs complete (whatever completes them: a worker, a
    cancel, a deadline, a lost worker).

    A job's value is counted in one bucket, the smallest that holds it (``metric_histogram`` adds them up),
    with the names and bounds written out: counting it in every bucket above, with a JSON path built per
    bucket row, cost three times a job's own UPDATE."""
    lines = [
        "INSERT INTO completed_counts (endpoint, error_type, n)",
        "VALUES (NEW.endpoint, COALESCE(json_extract(NEW.error, '$.error_type'), ''), 1)",
        "ON CONFLICT (endpoint, error_type) DO UPDATE SET n = n + 1;",
    ]
    for name in HISTOGRAM_BUCKETS:
        value = f"(SELECT json_extract(NEW.metrics, '$.{name}') AS v)"
        bucket = " ".join(f"WHEN v <= {float(le)!r} THEN {float(le)!r}" for le in HISTOGRAM_BUCKETS[name])
        lines += [
            f"INSERT INTO histogram_sums (name, endpoint, total, n) SELECT '{name}', NEW.endpoint, v, 1 FROM {value}",
            "WHERE v IS NOT NULL ON CONFLICT (name, endpoint) DO UPDATE SET total = total + excluded.total, n = n + 1;",
            f"INSERT INTO histogram_counts (name, endpoint, le, n) SELECT '{name}', NEW.endpoint, le, 1",
            f"FROM (SELECT CASE {bucket} END AS le FROM {value}) WHERE le IS NOT NULL",
            "ON CONFLICT (name, endpoint, le) DO UPDATE SET n = n + 1;",
        ]
    body = "\n    ".join(lines)
    return (
        f"CREATE TRIGGER {_TRIGGER} AFTER UPDATE OF status ON jobs\n"
        f"WHEN NEW.status = 'COMPLETED' AND OLD.status != 'COMPLETED'\nBEGIN\n    {body}\nEND"
    )


_JOB_COLUMNS = (
    "id, endpoint, input, status, priority, key_id, base_url, created_at, started_at, finished_at, "
    "start_deadline, webhook_url, attempts, cancel_requested, worker_id, result, error, metrics"
)


LOCK_POLL_S = 0.00005


class WriterLock:
    """Writers of one database take turns: a thread lock within the process, then ``flock`` on a lock file
    beside the database across processes.

    SQLite's own busy handler makes a writer that finds the database locked sleep 1, 2, 5, 10 ... ms
    before trying again, which is most of a short request's latency under load; a process blocked in
    ``flock`` is woken the moment the lock is released. (Other programs writing the file still meet
    SQLite's busy timeout.)
    """

    def __init__(self, path: Path) -> None:
        self._thread_lock = threading.Lock()
        self._fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for the lock (``timeout`` None), or give up after ``timeout`` seconds and return False."""
        if not self._thread_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            if timeout is None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                return True
            deadline = time.monotonic() + timeout
            while True:  # flock cannot time out: poll (the writers' transactions last a fraction of this)
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        self._thread_lock.release()
                        return False
                    time.sleep(LOCK_POLL_S)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()


_WRITER_LOCKS: dict[Path, WriterLock] = {}
_WRITER_LOCKS_GUARD = threading.Lock()


def _writer_lock(path: Path) -> WriterLock:
    """One per database file and process (a worker opens several stores on one file; a second ``flock``
    through the same process's lock would not exclude the first)."""
    path = path.resolve()
    with _WRITER_LOCKS_GUARD:
        lock = _WRITER_LOCKS.get(path)
        if lock is None:
            lock = _WRITER_LOCKS[path] = WriterLock(path)
        return lock


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _insert_job(db: sqlite3.Connection, job: Job) -> None:
    values = job_insert_values(job, json.dumps)
    db.execute(f"INSERT INTO jobs ({JOB_INSERT_COLUMNS}) VALUES ({','.join('?' * len(values))})", values)


def _insert_logs(db: sqlite3.Connection, entries: Sequence[tuple[str, LogEntry]]) -> None:
    db.executemany(
        "INSERT INTO logs (job_id, message, level, source, timestamp) VALUES (?,?,?,?,?)",
        [(job_id, e.message, e.level, e.source, e.timestamp) for job_id, e in entries],
    )


def _enqueue_webhook(db: sqlite3.Connection, job_id: str, now: float) -> list[tuple[str, str]]:
    """Owe a webhook for a job that just completed: call inside the completing transaction.

    Returns the notifications to publish once the transaction committed (the job is done; a
    webhook is due when one was owed).
    """
    cur = db.execute(
        "INSERT OR IGNORE INTO webhooks (job_id, url, state, next_attempt_at, created_at) "
        "SELECT id, webhook_url, 'pending', ?, ? FROM jobs WHERE id = ? AND webhook_url IS NOT NULL",
        (now, now, job_id),
    )
    done = [(JOBS, f"{job_id} {DONE}")]
    return [*done, (JOBS, f"{job_id} {WEBHOOK}")] if cur.rowcount == 1 else done


def _recover(
    db: sqlite3.Connection, rows: list[sqlite3.Row], max_attempts: int, now: float, unstarted_free: bool
) -> list[tuple[str, str]]:
    """Re-queue the given IN_PROGRESS jobs of a dead worker while attempts remain, else fail them.

    With ``unstarted_free``, a job that was only claimed (prefetched, ``started_at`` unset) is re-queued
    whatever its attempt count: it never ran on that worker. Returns the notifications to publish.
    """
    failed_error = runner_disconnected_error(max_attempts)
    notes: list[tuple[str, str]] = []
    for r in rows:
        if r["attempts"] < max_attempts or (unstarted_free and r["started_at"] is None):
            db.execute(
                "UPDATE jobs SET status = 'IN_QUEUE', worker_id = NULL, lease_until = NULL, "
                "started_at = NULL WHERE id = ? AND status = 'IN_PROGRESS'",
                (r["id"],),
            )
            notes.append((QUEUE, r["endpoint"]))
        else:
            db.execute(
                "UPDATE jobs SET status = 'COMPLETED', finished_at = ?, error = ?, lease_until = NULL "
                "WHERE id = ? AND status = 'IN_PROGRESS'",
                (now, json.dumps(failed_error), r["id"]),
            )
            notes += _enqueue_webhook(db, r["id"], now)
    return notes


def _row_to_webhook(row: sqlite3.Row) -> WebhookDelivery:
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


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        endpoint=row["endpoint"],
        input=json.loads(row["input"]),
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
        cancel_requested=bool(row["cancel_requested"]),
        worker_id=row["worker_id"],
        result=_loads(row["result"]),
        error=_loads(row["error"]),
        metrics=json.loads(row["metrics"]),
    )


# What the API's event loop waits, at most, for another writer before handing its submit to a thread: the
# workers' transactions (claim, start, complete) take a fraction of it; a thread hop costs more CPU than
# waiting them out, but a long transaction (a checkpoint, a purge) must not stall every request.
TRY_CREATE_WAIT_S = 0.001


class SQLiteJobStore(SingleJobCalls):
    local = True
    transient_errors: tuple[type[Exception], ...] = (sqlite3.OperationalError,)  # "database is locked"

    def __init__(self, path: Path | str, clock: Callable[[], float] = time.time) -> None:
        """``clock`` (wall-clock seconds) stamps leases, deadlines and webhooks; tests pass a fake one."""
        self.path = Path(path)
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._writer = _writer_lock(self.path)
        self._db().executescript(SCHEMA)
        # Wake-ups for waiters in any process using this database (published after each commit).
        self.events = LocalNotifier(self.path.parent / f"{self.path.stem}.notify")
        self._init_counters()

    @classmethod
    def from_url(cls, url: str) -> SQLiteJobStore:
        if not url.startswith("sqlite:///"):
            raise ValueError(f"unsupported store URL {url!r} (expected sqlite:///path)")
        return cls(url.removeprefix("sqlite:///"))

    # -- connection handling
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception); the caller holds the writer lock."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._writer.acquire()
        try:
            with self._transaction() as db:
                yield db
        finally:
            self._writer.release()

    def _publish(self, notes: list[tuple[str, str]]) -> None:
        """One datagram per channel for all of a commit's notifications."""
        by_channel: dict[str, list[str]] = {}
        for channel, payload in notes:
            by_channel.setdefault(channel, []).append(payload)
        for channel, payloads in by_channel.items():
            self.events.publish(channel, "\n".join(dict.fromkeys(payloads)))

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
        self.events.close()

    # -- API side
    def create(self, job: Job) -> None:
        self.create_many([job])

    def create_many(self, jobs: Sequence[Job]) -> None:
        with self._write() as db:
            for job in jobs:
                _insert_job(db, job)
        self._publish([(QUEUE, job.endpoint) for job in jobs])

    def try_create(self, jobs: Sequence[Job]) -> bool:
        if not self._writer.acquire(timeout=TRY_CREATE_WAIT_S):
            return False
        try:
            with self._transaction() as db:
                for job in jobs:
                    _insert_job(db, job)
        finally:
            self._writer.release()
        self._publish([(QUEUE, job.endpoint) for job in jobs])
        return True

    def get(self, job_id: str) -> Job | None:
        row = self._db().execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    def queue_position(self, job: Job) -> int:
        rank = PRIORITY_RANK[job.priority]
        (count,) = (
            self._db()
            .execute(
                "SELECT COUNT(*) FROM jobs WHERE endpoint = ? AND status = 'IN_QUEUE' AND "
                "(priority_rank < ? OR (priority_rank = ? AND created_at < ?))",
                (job.endpoint, rank, rank, job.created_at),
            )
            .fetchone()
        )
        return int(count)

    def request_cancel(self, job_id: str) -> CancelOutcome:
        now = self.clock()
        notes: list[tuple[str, str]] = []
        with self._write() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return "NOT_FOUND"
            if row["status"] == "COMPLETED":
                return "ALREADY_COMPLETED"
            if row["status"] == "IN_QUEUE":
                db.execute(
                    "UPDATE jobs SET status = 'COMPLETED', cancel_requested = 1, error = ?, finished_at = ? "
                    "WHERE id = ?",
                    (json.dumps(CANCELLED_ERROR), now, job_id),
                )
                notes = _enqueue_webhook(db, job_id, now)
            else:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        self._publish(notes)
        return "CANCELLATION_REQUESTED"

    def logs(self, job_id: str, since: int = 0) -> list[LogEntry]:
        rows = (
            self._db()
            .execute(
                "SELECT message, level, source, timestamp FROM logs WHERE job_id = ? ORDER BY seq LIMIT -1 OFFSET ?",
                (job_id, since),
            )
            .fetchall()
        )
        return [LogEntry(r["message"], r["level"], r["source"], r["timestamp"]) for r in rows]

    def queue_depths(self) -> dict[str, int]:
        rows = (
            self._db()
            .execute("SELECT endpoint, COUNT(*) AS n FROM jobs WHERE status = 'IN_QUEUE' GROUP BY endpoint")
            .fetchall()
        )
        return {r["endpoint"]: int(r["n"]) for r in rows}

    def pipeline_states(self) -> list[PipelineState]:
        rows = self._db().execute("SELECT * FROM pipeline_states").fetchall()
        return [
            PipelineState(r["endpoint"], r["worker_id"], r["state"], r["reason"], r["device"], r["updated_at"])
            for r in rows
        ]

    def _init_counters(self) -> None:
        """Register the histogram buckets and the counting trigger; a store whose counters are missing or
        kept another way (before ``COUNTERS_VERSION``) is counted once from its jobs."""
        with self._write() as db:
            trigger = _counters_trigger()
            row = db.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?", (_TRIGGER,)
            ).fetchone()
            if row is None or row[0] != trigger:
                db.execute(f"DROP TRIGGER IF EXISTS {_TRIGGER}")
                db.execute(trigger)
            db.executemany(
                "INSERT OR IGNORE INTO histogram_buckets (name, le) VALUES (?, ?)",
                [(name, float(le)) for name, buckets in HISTOGRAM_BUCKETS.items() for le in buckets],
            )
            version = db.execute("SELECT value FROM store_meta WHERE key = 'counters'").fetchone()
            if version is not None and version[0] == COUNTERS_VERSION:
                return
            for table in ("completed_counts", "histogram_sums", "histogram_counts"):  # a full recount, once
                db.execute(f"DELETE FROM {table}")
            db.execute(
                "INSERT INTO completed_counts (endpoint, error_type, n) SELECT endpoint, "
                "COALESCE(json_extract(error, '$.error_type'), ''), COUNT(*) FROM jobs WHERE status = 'COMPLETED' "
                "GROUP BY 1, 2"
            )
            db.execute(
                "INSERT INTO histogram_sums (name, endpoint, total, n) SELECT b.name, j.endpoint, "
                "SUM(json_extract(j.metrics, '$.' || b.name)), COUNT(*) FROM jobs j, "
                "(SELECT DISTINCT name FROM histogram_buckets) b WHERE j.status = 'COMPLETED' "
                "AND json_extract(j.metrics, '$.' || b.name) IS NOT NULL GROUP BY 1, 2"
            )
            db.execute(
                "INSERT INTO histogram_counts (name, endpoint, le, n) SELECT name, endpoint, le, COUNT(*) FROM ("
                "SELECT b.name, j.endpoint, MIN(b.le) AS le FROM jobs j, histogram_buckets b "
                "WHERE j.status = 'COMPLETED' AND json_extract(j.metrics, '$.' || b.name) <= b.le "
                "GROUP BY j.id, b.name) GROUP BY 1, 2, 3"
            )
            db.execute("INSERT OR REPLACE INTO store_meta (key, value) VALUES ('counters', ?)", (COUNTERS_VERSION,))

    def completed_stats(self) -> list[sqlite3.Row]:
        """Per-endpoint counts of finished jobs by error type ('' = success), for /metrics (from counters)."""
        return self._db().execute("SELECT endpoint, error_type, n FROM completed_counts").fetchall()

    def metric_histogram(self, name: str, buckets: tuple[float, ...]) -> list[tuple[str, list[int], float, int]]:
        """Per endpoint: cumulative bucket counts, sum and count of ``metrics.<name>`` of finished jobs.

        Read from counters kept as jobs complete; ``buckets`` must be ``HISTOGRAM_BUCKETS[name]``.
        """
        db = self._db()
        counted: dict[str, list[tuple[float, int]]] = {}  # endpoint -> (bucket, jobs whose smallest it is)
        for r in db.execute("SELECT endpoint, le, n FROM histogram_counts WHERE name = ?", (name,)):
            counted.setdefault(r["endpoint"], []).append((r["le"], int(r["n"])))
        return [
            (
                r["endpoint"],
                [sum(n for le, n in counted.get(r["endpoint"], ()) if le <= b) for b in buckets],
                float(r["total"]),
                int(r["n"]),
            )
            for r in db.execute("SELECT endpoint, total, n FROM histogram_sums WHERE name = ?", (name,))
        ]

    def purge_finished(self, finished_before: float, limit: int = 1000) -> int:
        """See ``JobStore.purge_finished``."""
        with self._write() as db:
            ids = [
                r["id"]
                for r in db.execute(
                    "SELECT id FROM jobs WHERE status = 'COMPLETED' AND finished_at < ? AND NOT EXISTS "
                    "(SELECT 1 FROM webhooks w WHERE w.job_id = jobs.id AND w.state = 'pending') LIMIT ?",
                    (finished_before, limit),
                )
            ]
            if ids:
                marks = ",".join("?" * len(ids))
                db.execute(f"DELETE FROM logs WHERE job_id IN ({marks})", ids)
                db.execute(f"DELETE FROM webhooks WHERE job_id IN ({marks})", ids)
                db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
        return len(ids)

    def set_worker_stats(self, worker_id: str, device: str, allocated: int | None, reserved: int | None) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO worker_stats VALUES (?,?,?,?,?)",
                (worker_id, device, allocated, reserved, self.clock()),
            )

    def worker_stats(self) -> list[sqlite3.Row]:
        return self._db().execute("SELECT * FROM worker_stats").fetchall()

    def set_worker_metrics(
        self,
        worker_id: str,
        gauges: dict[tuple[str, str], float],
        histograms: dict[tuple[str, str], tuple[list[int], float, int]],
    ) -> None:
        """A worker's own numbers, keyed by (metric name, endpoint): gauges (and counters) replace the
        stored value; histograms are cumulative bucket counts, sum and count since the worker started."""
        now = self.clock()
        with self._write() as db:
            for (name, endpoint), value in gauges.items():
                db.execute(
                    "INSERT OR REPLACE INTO worker_gauges VALUES (?,?,?,?,?)", (worker_id, name, endpoint, value, now)
                )
            for (name, endpoint), (counts, total, n) in histograms.items():
                db.execute(
                    "INSERT OR REPLACE INTO worker_histograms VALUES (?,?,?,?,?,?)",
                    (worker_id, name, endpoint, json.dumps(counts), total, n),
                )

    def worker_gauges(self) -> list[tuple[str, str, str, float]]:
        """(worker, name, endpoint, value) of every worker-reported gauge or counter."""
        rows = self._db().execute("SELECT worker_id, name, endpoint, value FROM worker_gauges").fetchall()
        return [(r[0], r[1], r[2], float(r[3])) for r in rows]

    def worker_histograms(self, name: str) -> list[tuple[str, list[int], float, int]]:
        """Per endpoint: a worker-reported histogram summed over workers (dead ones' counts included, so the
        totals never go down)."""
        merged: dict[str, tuple[list[int], float, int]] = {}
        rows = (
            self._db()
            .execute("SELECT endpoint, counts, total, n FROM worker_histograms WHERE name = ?", (name,))
            .fetchall()
        )
        for r in rows:
            counts = json.loads(r["counts"])
            prev = merged.get(r["endpoint"])
            if prev is not None and len(prev[0]) == len(counts):
                counts = [a + b for a, b in zip(prev[0], counts, strict=True)]
            merged[r["endpoint"]] = (counts, (prev[1] if prev else 0.0) + r["total"], (prev[2] if prev else 0) + r["n"])
        return [(endpoint, *value) for endpoint, value in sorted(merged.items())]

    # -- worker side
    def queue_heads(self) -> dict[str, tuple[float, int]]:
        rows = (
            self._db()
            .execute(
                "SELECT endpoint, MIN(created_at) AS oldest, COUNT(*) AS n FROM jobs WHERE status = 'IN_QUEUE' "
                "GROUP BY endpoint"
            )
            .fetchall()
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
        """Claim the head of the endpoint's queue plus up to ``max_batch - 1`` jobs with its batch key.

        With ``max_running_per_key``, jobs of an API key that already has that many running are passed over
        (they stay queued, in order, for a later claim).

        Order is (priority, created): ``normal`` before ``low``, FIFO within. A claim only leases the jobs
        to the worker (they show IN_PROGRESS); ``start`` marks when they really start running, so a
        prefetched batch that never ran costs no attempt. Jobs past their start deadline are left to expire.
        With ``key`` (joining a running stepwise batch), nothing is claimed unless the head has that key:
        claiming around the head would starve it.
        """
        now = self.clock()
        with self._write() as db:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE endpoint = ? AND status = 'IN_QUEUE' "
                "AND (start_deadline IS NULL OR start_deadline >= ? OR attempts > 0) "
                "ORDER BY priority_rank, created_at LIMIT ?",
                (endpoint, now, max(64, max_batch * 8)),
            ).fetchall()
            jobs = (_row_to_job(r) for r in rows)  # converted only as far as the batch needs
            if max_running_per_key is not None:
                running = db.execute(
                    "SELECT key_id, COUNT(*) FROM jobs WHERE status = 'IN_PROGRESS' AND key_id IS NOT NULL "
                    "GROUP BY key_id"
                ).fetchall()
                jobs = within_key_cap(jobs, {r[0]: r[1] for r in running}, max_running_per_key)
            chosen = head_batch(jobs, key_fn, max_batch, key)
            if not chosen:
                return []
            marks = ",".join("?" * len(chosen))
            db.execute(
                "UPDATE jobs SET status = 'IN_PROGRESS', worker_id = ?, lease_until = ? "
                f"WHERE id IN ({marks}) AND status = 'IN_QUEUE'",
                (worker_id, now + lease_s, *(j.id for j in chosen)),
            )
            for job in chosen:
                job.status, job.worker_id = "IN_PROGRESS", worker_id
        return chosen

    def queued_ids(self, endpoint: str, limit: int) -> list[str]:
        """The first ``limit`` queued jobs of an endpoint in claim order (to tell them what they wait for)."""
        rows = (
            self._db()
            .execute(
                "SELECT id FROM jobs WHERE endpoint = ? AND status = 'IN_QUEUE' ORDER BY priority_rank, created_at "
                "LIMIT ?",
                (endpoint, limit),
            )
            .fetchall()
        )
        return [r["id"] for r in rows]

    def start(self, job_ids: list[str], worker_id: str) -> list[str]:
        """The claimed jobs start running now: count the attempt, stamp ``started_at``.

        A job whose start deadline passed while it waited in a prefetched batch completes with the
        timeout error instead. Returns the ids that really started (still this worker's).
        """
        if not job_ids:
            return []
        now = self.clock()
        started: list[str] = []
        notes: list[tuple[str, str]] = []
        marks = ",".join("?" * len(job_ids))
        with self._write() as db:
            rows = db.execute(
                f"SELECT id, start_deadline, attempts FROM jobs WHERE id IN ({marks}) AND status = 'IN_PROGRESS' "
                "AND worker_id = ?",
                (*job_ids, worker_id),
            ).fetchall()
            for row in rows:
                if row["start_deadline"] is not None and row["start_deadline"] < now and row["attempts"] == 0:
                    db.execute(
                        "UPDATE jobs SET status = 'COMPLETED', finished_at = ?, error = ?, lease_until = NULL "
                        "WHERE id = ?",
                        (now, json.dumps(TIMEOUT_ERROR), row["id"]),
                    )
                    notes += _enqueue_webhook(db, row["id"], now)
                else:
                    started.append(row["id"])
            if started:
                marks = ",".join("?" * len(started))
                db.execute(
                    f"UPDATE jobs SET started_at = ?, attempts = attempts + 1 WHERE id IN ({marks})", (now, *started)
                )
        self._publish(notes + [(JOBS, f"{job_id} {STARTED}") for job_id in started])
        order = {job_id: i for i, job_id in enumerate(job_ids)}
        return sorted(started, key=order.__getitem__)

    def release(self, job_ids: list[str], worker_id: str) -> None:
        """Give claimed jobs that never started back to the queue (a stopping worker's prefetch)."""
        released: list[str] = []
        with self._write() as db:
            for job_id in job_ids:
                row = db.execute(
                    "UPDATE jobs SET status = 'IN_QUEUE', worker_id = NULL, lease_until = NULL "
                    "WHERE id = ? AND status = 'IN_PROGRESS' AND worker_id = ? AND started_at IS NULL "
                    "RETURNING endpoint",
                    (job_id, worker_id),
                ).fetchone()
                if row is not None:
                    released.append(row["endpoint"])
        self._publish([(QUEUE, endpoint) for endpoint in dict.fromkeys(released)])

    def heartbeat(self, job_ids: list[str], lease_s: float, worker_id: str | None = None) -> None:
        if not job_ids:
            return
        marks = ",".join("?" * len(job_ids))
        owner = "" if worker_id is None else " AND worker_id = ?"
        with self._write() as db:
            db.execute(
                f"UPDATE jobs SET lease_until = ? WHERE status = 'IN_PROGRESS' AND id IN ({marks}){owner}",
                (self.clock() + lease_s, *job_ids, *([] if worker_id is None else [worker_id])),
            )

    def append_logs(self, entries: list[tuple[str, LogEntry]]) -> None:
        if not entries:
            return
        with self._write() as db:
            _insert_logs(db, entries)
        self._publish([(JOBS, f"{job_id} {LOG}") for job_id, _ in entries])

    def is_cancel_requested(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        rows = (
            self._db()
            .execute(f"SELECT id FROM jobs WHERE cancel_requested = 1 AND id IN ({marks})", job_ids)
            .fetchall()
        )
        return {r["id"] for r in rows}

    def complete_many(
        self, completions: list[Completion], worker_id: str | None = None, logs: Sequence[tuple[str, LogEntry]] = ()
    ) -> list[str]:
        """See ``JobStore.complete_many``."""
        now = self.clock()
        owner = "" if worker_id is None else " AND worker_id = ?"
        done: list[str] = []
        notes: list[tuple[str, str]] = []
        with self._write() as db:
            _insert_logs(db, logs)
            for c in completions:
                row = db.execute(
                    "UPDATE jobs SET status = 'COMPLETED', finished_at = ?, result = ?, error = ?, metrics = ?, "
                    f"lease_until = NULL WHERE id = ? AND status = 'IN_PROGRESS'{owner} RETURNING webhook_url",
                    (
                        now,
                        None if c.result is None else json.dumps(c.result),
                        None if c.error is None else json.dumps(c.error),
                        json.dumps(c.metrics),
                        c.job_id,
                        *([] if worker_id is None else [worker_id]),
                    ),
                ).fetchone()
                if row is not None:
                    done.append(c.job_id)
                    # most jobs owe no webhook: skip its insert (one statement less per job)
                    notes += _enqueue_webhook(db, c.job_id, now) if row[0] else [(JOBS, f"{c.job_id} {DONE}")]
        finished = set(done)
        notes += [(JOBS, f"{job_id} {LOG}") for job_id, _ in logs if job_id not in finished]
        self._publish(notes)
        return done

    def expire_deadlines(self, now: float | None = None) -> list[str]:
        """Queued jobs whose start deadline passed complete with a timeout error (not re-queued ones: they
        did start once)."""
        now = self.clock() if now is None else now
        notes: list[tuple[str, str]] = []
        with self._write() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE status = 'IN_QUEUE' AND attempts = 0 AND start_deadline IS NOT NULL "
                "AND start_deadline < ?",
                (now,),
            ).fetchall()
            ids = [r["id"] for r in rows]
            for job_id in ids:
                db.execute(
                    "UPDATE jobs SET status = 'COMPLETED', finished_at = ?, error = ? "
                    "WHERE id = ? AND status = 'IN_QUEUE'",
                    (now, json.dumps(TIMEOUT_ERROR), job_id),
                )
                notes += _enqueue_webhook(db, job_id, now)
        self._publish(notes)
        return ids

    def recover_expired_leases(self, max_attempts: int, now: float | None = None) -> list[str]:
        """Jobs of a dead worker (lease expired): re-queue if attempts remain, else fail them."""
        now = self.clock() if now is None else now
        with self._write() as db:
            rows = db.execute(
                "SELECT id, endpoint, attempts, started_at FROM jobs WHERE status = 'IN_PROGRESS' AND lease_until < ?",
                (now,),
            ).fetchall()
            notes = _recover(db, rows, max_attempts, now, unstarted_free=False)
        self._publish(notes)
        return [r["id"] for r in rows]

    def fail_queued(self, endpoint: str, error: dict[str, Any]) -> list[str]:
        """See ``JobStore.fail_queued``."""
        now = self.clock()
        notes: list[tuple[str, str]] = []
        with self._write() as db:
            rows = db.execute("SELECT id FROM jobs WHERE endpoint = ? AND status = 'IN_QUEUE'", (endpoint,)).fetchall()
            for r in rows:
                db.execute(
                    "UPDATE jobs SET status = 'COMPLETED', finished_at = ?, error = ? "
                    "WHERE id = ? AND status = 'IN_QUEUE'",
                    (now, json.dumps(error), r["id"]),
                )
                notes += _enqueue_webhook(db, r["id"], now)
        self._publish(notes)
        return [r["id"] for r in rows]

    def release_dead_worker(self, worker_id: str, max_attempts: int) -> list[str]:
        """See ``JobStore.release_dead_worker``: a dead worker's jobs are recovered now, not after the lease."""
        now = self.clock()
        with self._write() as db:
            rows = db.execute(
                "SELECT id, endpoint, attempts, started_at FROM jobs WHERE status = 'IN_PROGRESS' AND worker_id = ?",
                (worker_id,),
            ).fetchall()
            notes = _recover(db, rows, max_attempts, now, unstarted_free=True)
            db.execute("DELETE FROM pipeline_states WHERE worker_id = ?", (worker_id,))
        self._publish(notes)
        return [r["id"] for r in rows]

    def set_pipeline_state(self, state: PipelineState) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO pipeline_states VALUES (?,?,?,?,?,?)",
                (state.endpoint, state.worker_id, state.state, state.reason, state.device, state.updated_at),
            )
        self.events.publish(JOBS, STATES)

    def clear_pipeline_states(self, worker_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM pipeline_states WHERE worker_id = ?", (worker_id,))
        self.events.publish(JOBS, STATES)

    # -- webhook outbox
    def claim_webhooks(self, owner: str, limit: int, lease_s: float, now: float | None = None) -> list[WebhookDelivery]:
        """Lease up to ``limit`` due, pending deliveries (oldest due first) to ``owner``.

        A lease that runs out (its sender died mid-attempt) makes the row claimable again.
        """
        now = self.clock() if now is None else now
        with self._write() as db:
            rows = db.execute(
                "SELECT * FROM webhooks WHERE state = 'pending' AND next_attempt_at <= ? "
                "AND (lease_until IS NULL OR lease_until < ?) ORDER BY next_attempt_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            for r in rows:
                db.execute(
                    "UPDATE webhooks SET owner = ?, lease_until = ? WHERE job_id = ?",
                    (owner, now + lease_s, r["job_id"]),
                )
        return [_row_to_webhook(r) for r in rows]

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
        """Record one attempt by the lease holder; False when ``owner`` no longer holds the lease."""
        now = self.clock()
        state = "pending" if outcome == "retry" else outcome
        with self._write() as db:
            cur = db.execute(
                "UPDATE webhooks SET state = ?, attempts = attempts + 1, last_status = ?, last_error = ?, "
                "next_attempt_at = COALESCE(?, next_attempt_at), delivered_at = ?, owner = NULL, "
                "lease_until = NULL WHERE job_id = ? AND owner = ? AND state = 'pending'",
                (
                    state,
                    status_code,
                    error,
                    next_attempt_at,
                    now if outcome == "delivered" else None,
                    job_id,
                    owner,
                ),
            )
            return cur.rowcount == 1

    def release_webhooks(self, owner: str) -> None:
        """Give back ``owner``'s unfinished leases (clean shutdown), so no one waits for them to run out."""
        with self._write() as db:
            db.execute(
                "UPDATE webhooks SET owner = NULL, lease_until = NULL WHERE owner = ? AND state = 'pending'",
                (owner,),
            )

    def webhook(self, job_id: str) -> WebhookDelivery | None:
        row = self._db().execute("SELECT * FROM webhooks WHERE job_id = ?", (job_id,)).fetchone()
        return _row_to_webhook(row) if row else None
