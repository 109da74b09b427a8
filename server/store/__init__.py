"""Job stores. ``open_store(url)`` picks the implementation from the URL scheme."""

from __future__ import annotations

from server.store.base import Completion, Job, JobStore, LogEntry, PipelineState
from server.store.sqlite import SQLiteJobStore

__all__ = ["Completion", "Job", "JobStore", "LogEntry", "PipelineState", "SQLiteJobStore", "open_store"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str) -> JobStore:
    if url.startswith("sqlite:///"):
        return SQLiteJobStore.from_url(url)
    if url.startswith(POSTGRES_SCHEMES):
        from server.store.postgres import PostgresJobStore  # psycopg only where PostgreSQL is used

        return PostgresJobStore.from_url(url)
    raise ValueError(f"unsupported store URL {url!r}; use sqlite:///path or postgresql://user@host/db")
