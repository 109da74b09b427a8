"""Group commit of submits: the jobs submitted during one turn of the API's event loop are written to a
local store in one transaction.

Under load several requests are parsed in the same turn (their bytes arrived together); one write each
would cost a commit and a turn on the database's write lock apiece, and the workers' claims and
completions queue behind every one of them. Each submit still waits until its own job is stored: nothing
is acknowledged before it is durable, and a failed write fails every submit of its group.
"""

from __future__ import annotations

import asyncio

from anyio import to_thread

from server.store import Job, JobStore


class GroupCommit:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._group: list[tuple[Job, asyncio.Future[None]]] = []
        self._in_threads: set[asyncio.Task[None]] = set()  # groups written from a thread (kept referenced)

    async def create(self, job: Job) -> None:
        """Store ``job`` with the others submitted this turn; returns once it is stored (raises if not)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if not self._group:
            loop.call_soon(self._write_group)
        self._group.append((job, done))
        await done

    def _write_group(self) -> None:
        group, self._group = self._group, []
        jobs = [job for job, _ in group]
        try:
            stored = self.store.try_create(jobs)
        except Exception as exc:  # handed to every submit of the group, which answers it
            _settle(group, exc)
            return
        if stored:
            _settle(group, None)
        else:  # a long write holds the lock (a checkpoint, a purge): wait for it off the loop
            task = asyncio.ensure_future(self._write_from_thread(group))
            self._in_threads.add(task)
            task.add_done_callback(self._in_threads.discard)

    async def _write_from_thread(self, group: list[tuple[Job, asyncio.Future[None]]]) -> None:
        try:
            await to_thread.run_sync(self.store.create_many, [job for job, _ in group])
        except Exception as exc:
            _settle(group, exc)
        else:
            _settle(group, None)


def _settle(group: list[tuple[Job, asyncio.Future[None]]], error: Exception | None) -> None:
    for _, done in group:
        if done.done():  # its request was cancelled meanwhile (client gone): the job stands regardless
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
