"""Job stores. ``open_store(url)`` picks the implementation from the URL scheme."""

from __future__ import annotations

from server.store.base import Job, JobStore, LogEntry, PipelineState
from server.store.sqlite import SQLiteJobStore

__all__ = ["Job", "JobStore", "LogEntry", "PipelineState", "SQLiteJobStore", "open_store"]


def open_store(url: str) -> SQLiteJobStore:
    if url.startswith("sqlite:///"):
        return SQLiteJobStore.from_url(url)
    raise ValueError(f"unsupported store URL {url!r}; this build supports sqlite:///path")
