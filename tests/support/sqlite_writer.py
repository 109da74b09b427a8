"""Another process holding a SQLite store's write lock (a long write), for tests of what waits for it."""

from __future__ import annotations

from typing import Any

from server.store.sqlite import SQLiteJobStore


def hold_the_write_lock(path: str, held: Any, release: Any) -> None:
    """Run in a spawned process: take the write lock, set ``held``, keep it until ``release`` (at most 30 s)."""
    store = SQLiteJobStore(path)
    with store._write():
        held.set()
        release.wait(30)
