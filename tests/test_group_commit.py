"""The API's submits of one event-loop turn are written in one transaction; a busy store is waited for
off the loop; a failed write fails every submit of its group and stores none of them."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from server.group_commit import GroupCommit
from server.store import Job
from server.store.sqlite import SQLiteJobStore
from tests.support.sqlite_writer import hold_the_write_lock


class CountingStore(SQLiteJobStore):
    """The real store, recording the groups it was asked to write (and failing them when told to)."""

    def __init__(self, path: Path, fail: bool = False) -> None:
        super().__init__(path)
        self.groups: list[list[str]] = []
        self.fail = fail

    def try_create(self, jobs: Sequence[Job]) -> bool:
        self.groups.append([j.id for j in jobs])
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error")
        return super().try_create(jobs)


def job(i: int) -> Job:
    return Job(id=f"job-{i}", endpoint="a/b", input={"i": i}, created_at=1000.0 + i)


def test_submits_of_one_turn_share_one_transaction_and_each_waits_until_stored(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "jobs.sqlite")
    writes = GroupCommit(store)

    async def scenario() -> None:
        await asyncio.gather(*(writes.create(job(i)) for i in range(3)))  # one turn
        await writes.create(job(3))  # a later turn: its own
        assert store.queue_depths() == {"a/b": 4}

    asyncio.run(scenario())
    assert store.groups == [["job-0", "job-1", "job-2"], ["job-3"]]
    store.close()


def test_a_failed_group_write_fails_each_of_its_submits_and_stores_none(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "jobs.sqlite", fail=True)
    writes = GroupCommit(store)

    async def scenario() -> list[object]:
        return await asyncio.gather(*(writes.create(job(i)) for i in range(2)), return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert [type(o) for o in outcomes] == [sqlite3.OperationalError] * 2
    assert store.queue_depths() == {}
    store.close()


@pytest.mark.timeout(120)
def test_a_group_that_meets_a_long_write_waits_for_it_in_a_thread_not_on_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = SQLiteJobStore(path)
    writes = GroupCommit(store)
    ctx = mp.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=hold_the_write_lock, args=(str(path), held, release))
    holder.start()

    async def scenario() -> None:
        assert await asyncio.to_thread(held.wait, 60)
        submit = asyncio.ensure_future(writes.create(job(0)))
        while not writes._in_threads:  # the loop stays free: this coroutine runs while the group waits
            await asyncio.sleep(0.01)
        assert not submit.done() and store.queue_depths() == {}
        release.set()
        await asyncio.wait_for(submit, 60)
        assert store.queue_depths() == {"a/b": 1}

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        holder.join(timeout=30)
        store.close()
