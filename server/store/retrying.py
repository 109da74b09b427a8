"""A worker's view of the job store: calls wait out an unreachable database instead of failing.

A PostgreSQL restart or failover (or a SQLite file locked for longer than its busy timeout) must cost
a worker time, not its process, nor the results it holds. Every call that raises one of the store's
``transient_errors`` is retried with back-off (0.1 s doubling to 5 s) until it succeeds or the worker
stops. Retrying is safe: writes are transactions that either happened or not, completions name their
worker (a late duplicate is ignored), and a claim whose answer was lost is recovered with its lease.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, cast

from server.store.base import JobStore

log = logging.getLogger("fal_onprem.store")

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0


class RetryingStore:
    def __init__(self, store: JobStore, stop: threading.Event) -> None:
        self._store = store
        self._stop = stop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        if not callable(value):
            return value
        call = functools.partial(self._retrying, name, value)
        setattr(self, name, call)  # later lookups skip __getattr__
        return call

    def _retrying(self, name: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        delay = FIRST_DELAY_S
        while True:
            try:
                return method(*args, **kwargs)
            except self._store.transient_errors as exc:
                if self._stop.is_set():
                    raise
                log.warning("job store unavailable in %s (%s): retrying in %.1f s", name, exc, delay)
                self._stop.wait(delay)
                delay = min(2 * delay, MAX_DELAY_S)


def retrying(store: JobStore, stop: threading.Event) -> JobStore:
    return cast(JobStore, RetryingStore(store, stop))
