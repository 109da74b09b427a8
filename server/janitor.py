"""Queue housekeeping in the API process, so that no job waits on a worker that is gone.

Workers do the same on their own heartbeat thread; this copy covers the case where none is alive
(all crashed, or ``serve --no-worker`` with external workers down): start deadlines still expire and
a dead worker's jobs are still re-queued once, then failed, never left IN_PROGRESS. Queued jobs of an
endpoint that no live worker can serve complete with its 503 (``jobs.fail_unservable``). It also deletes
finished jobs older than ``job_ttl_s`` and stored files (outputs, uploads) older than ``file_ttl_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from anyio import to_thread
from fastapi import FastAPI

from server.jobs import fail_unservable
from server.store import JobStore

log = logging.getLogger("fal_onprem.janitor")

INTERVAL_S = 2.0
FILE_SWEEP_EVERY = 30  # rounds (one minute)


async def _loop(app: FastAPI) -> None:
    store, settings = app.state.store, app.state.settings
    rounds, started = 0, time.time()
    while True:
        try:
            await to_thread.run_sync(store.expire_deadlines)
            await to_thread.run_sync(store.recover_expired_leases, settings.max_attempts)
            failed = await to_thread.run_sync(fail_unservable, store, app.state.endpoints, settings, started)
            for endpoint, ids in failed.items():
                if ids:
                    log.warning("%s: no worker can serve it: %d queued request(s) failed with 503", endpoint, len(ids))
            if settings.job_ttl_s > 0 and rounds % FILE_SWEEP_EVERY == 0:
                purged = await to_thread.run_sync(purge_old_jobs, store, settings.job_ttl_s)
                if purged:
                    log.info("deleted %d finished jobs older than %.0f s", purged, settings.job_ttl_s)
            if settings.file_ttl_s is not None and rounds % FILE_SWEEP_EVERY == 0:
                removed = await to_thread.run_sync(app.state.files.sweep, settings.file_ttl_s)
                if removed:
                    log.info("removed %d stored files older than %.0f s", removed, settings.file_ttl_s)
        except Exception:  # e.g. a locked database: try again next round
            log.exception("queue housekeeping failed")
        rounds += 1
        await asyncio.sleep(INTERVAL_S)


def purge_old_jobs(store: JobStore, ttl_s: float, rounds: int = 100) -> int:
    """Delete finished jobs older than ``ttl_s`` in short transactions (workers keep writing meanwhile)."""
    total, cutoff = 0, time.time() - ttl_s
    for _ in range(rounds):
        deleted = store.purge_finished(cutoff)
        total += deleted
        if not deleted:
            break
    return total


@asynccontextmanager
async def janitor(app: FastAPI) -> AsyncIterator[None]:
    task = asyncio.create_task(_loop(app), name="queue-janitor")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
