"""Versioned schema of the PostgreSQL store, applied in order at open and by ``fal-onprem db upgrade``.

Each migration runs once, in its own transaction, recorded in ``schema_migrations``. A transaction-level
advisory lock serialises concurrent starts (API replicas and workers booting together): the second
one waits, then finds nothing left to apply. Append new migrations; never edit an applied one.
"""

from __future__ import annotations

import logging

log = logging.getLogger("fal_onprem.store")

ADVISORY_LOCK = 0x6661_6C6F  # "falo": one key for every fal-onprem database

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "jobs, logs, pipeline states, webhook outbox, worker stats",
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            endpoint TEXT NOT NULL,
            input JSONB NOT NULL,
            status TEXT NOT NULL,
            priority TEXT NOT NULL,
            priority_rank SMALLINT NOT NULL,
            key_id TEXT,
            base_url TEXT NOT NULL DEFAULT '',
            created_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            start_deadline DOUBLE PRECISION,
            webhook_url TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            worker_id TEXT,
            lease_until DOUBLE PRECISION,
            result JSONB,
            error JSONB,
            metrics JSONB NOT NULL DEFAULT '{}'
        );
        CREATE INDEX jobs_queue ON jobs (endpoint, priority_rank, created_at) WHERE status = 'IN_QUEUE';
        CREATE INDEX jobs_leases ON jobs (lease_until) WHERE status = 'IN_PROGRESS';
        CREATE INDEX jobs_finished ON jobs (finished_at) WHERE status = 'COMPLETED';
        CREATE TABLE logs (
            seq BIGSERIAL PRIMARY KEY,
            job_id TEXT NOT NULL,
            message TEXT NOT NULL,
            level TEXT NOT NULL,
            source TEXT NOT NULL,
            timestamp DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX logs_job ON logs (job_id, seq);
        CREATE TABLE pipeline_states (
            endpoint TEXT NOT NULL,
            worker_id TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL,
            device TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (endpoint, worker_id)
        );
        CREATE TABLE webhooks (
            job_id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at DOUBLE PRECISION NOT NULL,
            lease_until DOUBLE PRECISION,
            owner TEXT,
            last_status INTEGER,
            last_error TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            delivered_at DOUBLE PRECISION
        );
        CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE state = 'pending';
        CREATE TABLE worker_stats (
            worker_id TEXT PRIMARY KEY,
            device TEXT NOT NULL,
            gpu_memory_allocated BIGINT,
            gpu_memory_reserved BIGINT,
            updated_at DOUBLE PRECISION NOT NULL
        );
        """,
    ),
    (
        2,
        "worker-reported gauges and histograms (memory budget, step scheduling)",
        """
        CREATE TABLE worker_gauges (
            worker_id TEXT NOT NULL,
            name TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            value DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (worker_id, name, endpoint)
        );
        CREATE TABLE worker_histograms (
            worker_id TEXT NOT NULL,
            name TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            counts JSONB NOT NULL,
            total DOUBLE PRECISION NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (worker_id, name, endpoint)
        );
        """,
    ),
    (
        3,
        "metrics counters kept by a completion trigger (scrapes no longer scan jobs; purged jobs stay counted)",
        """
        CREATE TABLE completed_counts (
            endpoint TEXT NOT NULL,
            error_type TEXT NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (endpoint, error_type)
        );
        CREATE TABLE histogram_buckets (name TEXT NOT NULL, le DOUBLE PRECISION NOT NULL, PRIMARY KEY (name, le));
        CREATE TABLE histogram_counts (
            name TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            le DOUBLE PRECISION NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (name, endpoint, le)
        );
        CREATE TABLE histogram_sums (
            name TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            total DOUBLE PRECISION NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (name, endpoint)
        );
        CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        -- One statement-level trigger: the jobs a statement completed are counted in one INSERT per table,
        -- in key order, so concurrent completing transactions lock counter rows in one global order (no
        -- deadlocks between a worker's complete and a janitor's multi-job update).
        CREATE FUNCTION fal_onprem_count_completed() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
            INSERT INTO completed_counts AS c (endpoint, error_type, n)
            SELECT n.endpoint, COALESCE(n.error->>'error_type', ''), COUNT(*)
            FROM new_rows n JOIN old_rows o ON o.id = n.id
            WHERE n.status = 'COMPLETED' AND o.status <> 'COMPLETED'
            GROUP BY 1, 2 ORDER BY 1, 2
            ON CONFLICT (endpoint, error_type) DO UPDATE SET n = c.n + EXCLUDED.n;

            INSERT INTO histogram_sums AS s (name, endpoint, total, n)
            SELECT b.name, n.endpoint, SUM((n.metrics->>b.name)::float8), COUNT(*)
            FROM new_rows n JOIN old_rows o ON o.id = n.id, (SELECT DISTINCT name FROM histogram_buckets) b
            WHERE n.status = 'COMPLETED' AND o.status <> 'COMPLETED' AND jsonb_typeof(n.metrics->b.name) = 'number'
            GROUP BY 1, 2 ORDER BY 1, 2
            ON CONFLICT (name, endpoint) DO UPDATE SET total = s.total + EXCLUDED.total, n = s.n + EXCLUDED.n;

            INSERT INTO histogram_counts AS h (name, endpoint, le, n)
            SELECT b.name, n.endpoint, b.le, COUNT(*)
            FROM new_rows n JOIN old_rows o ON o.id = n.id, histogram_buckets b
            WHERE n.status = 'COMPLETED' AND o.status <> 'COMPLETED' AND jsonb_typeof(n.metrics->b.name) = 'number'
                AND (n.metrics->>b.name)::float8 <= b.le
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
            ON CONFLICT (name, endpoint, le) DO UPDATE SET n = h.n + EXCLUDED.n;
            RETURN NULL;
        END
        $fn$;
        CREATE TRIGGER jobs_completed_counters AFTER UPDATE ON jobs
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION fal_onprem_count_completed();
        """,
    ),
]


def upgrade(url: str) -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied now."""
    import psycopg

    applied: list[int] = []
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, description, sql in MIGRATIONS:
            if version in done:
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version, description) VALUES (%s, %s)", (version, description))
            log.info("store schema: applied migration %d (%s)", version, description)
            applied.append(version)
    return applied


def current_version(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return 0
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
        return int(row[0]) if row else 0
