"""How the API waits for jobs: woken by the store's notifications, re-checking it at a slow fallback.

`JobEvents` holds the API process's one subscription to the store's ``jobs`` channel and fans each
notification out to the requests waiting in this process (``/run``, SSE status streams) and to the
webhook sender. A waiter always re-reads the store when woken (the store is the truth; a notification
only says "look now") and at least every ``poll_fallback_s``, so a lost notification costs latency.
It also keeps the workers' pipeline states that submits check, re-read when a worker reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import time
from collections.abc import Awaitable, Iterator

from anyio import to_thread
from fastapi import Request

from server.config import Settings
from server.store import Job, JobStore, PipelineState
from server.store.notify import DONE, JOBS, MISSED, STATES, WEBHOOK, Subscription

ONLY_DONE = frozenset({DONE})
# Pipeline states are re-read when a worker reports them (it re-reports every second) and at least this often,
# should that notification be lost.
STATES_MAX_AGE_S = 2.0


class Interrupted(enum.Enum):
    CLIENT_GONE = "client gone"
    SHUTTING_DOWN = "shutting down"


CLIENT_GONE, SHUTTING_DOWN = Interrupted.CLIENT_GONE, Interrupted.SHUTTING_DOWN


class Watch:
    """One waiter's wake-up flag; set by notifications about its job (and, if asked, about any job)."""

    def __init__(self, fallback_s: float, any_job: set[asyncio.Event], kinds: frozenset[str] | None) -> None:
        self.fallback_s = fallback_s
        self.event = asyncio.Event()
        self.kinds = kinds  # None: every change (started, log, done)
        self._any_job = any_job

    def follow_all_jobs(self, on: bool) -> None:
        """Also wake on other jobs' changes (a queued job's position moves when they start or finish)."""
        if on:
            self._any_job.add(self.event)
        else:
            self._any_job.discard(self.event)

    async def wait(self, timeout: float | None = None) -> None:
        """Until a notification (or what else sets ``event``) or the fallback interval; then re-arm."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.fallback_s if timeout is None else timeout):
                await self.event.wait()
        self.event.clear()


class JobEvents:
    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.enabled = settings.notify_events
        self.fallback_s = settings.poll_fallback_s
        self.webhook_due: asyncio.Event | None = None  # a completion owes a webhook: the sender looks at once
        self._by_job: dict[str, set[Watch]] = {}
        self._any_job: set[asyncio.Event] = set()
        self._sub: Subscription | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.shutting_down = threading.Event()  # `serve` got SIGTERM/SIGINT: waiting runs answer 503
        self._states: tuple[float, list[PipelineState]] | None = None  # (monotonic time read, states)

    def pipeline_states(self) -> list[PipelineState]:
        """The workers' pipeline states: the store's, re-read only after a worker reported (any thread)."""
        cached = self._states
        if cached is not None and self._sub is not None and time.monotonic() - cached[0] < STATES_MAX_AGE_S:
            return cached[1]
        read_at = time.monotonic()
        states = self.store.pipeline_states()
        self._states = (read_at, states)
        return states

    def start(self) -> None:
        """In the running event loop (the app's lifespan)."""
        self.webhook_due = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if not self.enabled:
            return
        self._sub = self.store.events.subscribe(JOBS)
        asyncio.get_running_loop().add_reader(self._sub.fileno(), self._dispatch)

    def stop(self) -> None:
        if self._sub is not None:
            asyncio.get_running_loop().remove_reader(self._sub.fileno())
            self._sub.close()
            self._sub = None

    def _dispatch(self) -> None:
        assert self._sub is not None
        for payload in self._sub.drain():
            if payload in (STATES, MISSED):
                self._states = None
            if payload == MISSED:
                self._wake_all()
                continue
            if payload == STATES:
                continue
            job_id, _, kind = payload.partition(" ")
            if kind == WEBHOOK:
                if self.webhook_due is not None:
                    self.webhook_due.set()
                continue
            for watch in self._by_job.get(job_id, ()):
                if watch.kinds is None or kind in watch.kinds:
                    watch.event.set()
            for event in self._any_job:
                event.set()

    def begin_shutdown(self) -> None:
        """From a signal handler or any thread: every waiter wakes and sees ``shutting_down``."""
        self.shutting_down.set()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        if self.webhook_due is not None:
            self.webhook_due.set()
        for watches in self._by_job.values():
            for watch in watches:
                watch.event.set()

    @contextlib.contextmanager
    def watch(self, job_id: str, kinds: frozenset[str] | None = None) -> Iterator[Watch]:
        """Register before reading the store, so a change between the read and the wait is not missed.

        ``kinds``: the events that wake it (default all: started, log, done).
        """
        watch = Watch(self.fallback_s, self._any_job, kinds)
        targets = self._by_job.setdefault(job_id, set())
        targets.add(watch)
        try:
            yield watch
        finally:
            watch.follow_all_jobs(False)
            targets.discard(watch)
            if not targets:
                self._by_job.pop(job_id, None)


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the request body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_until_done(request: Request, job_id: str, submit: Awaitable[object] | None = None) -> Job | Interrupted:
    """The finished job, or why the wait ended first (the caller decides what then).

    With ``submit`` (what queues the job), the wait is registered before the job exists and the store is
    first read when woken: a job just queued is not finished. A local store is read on the event loop: a
    read by primary key never waits for writers (SQLite WAL), and a thread hop per check cost more than the
    read. A remote one (PostgreSQL) is read from a thread.
    """
    store: JobStore = request.app.state.store
    events: JobEvents = request.app.state.job_events
    with events.watch(job_id, ONLY_DONE) as watch:
        if submit is not None:
            await submit
        gone = asyncio.ensure_future(_client_gone(request))
        gone.add_done_callback(lambda _: watch.event.set())
        try:
            if submit is not None:
                await watch.wait()
            while True:
                current = store.get(job_id) if store.local else await to_thread.run_sync(store.get, job_id)
                assert current is not None
                if current.status == "COMPLETED":
                    return current
                if gone.done():
                    return CLIENT_GONE
                if events.shutting_down.is_set():
                    return SHUTTING_DOWN
                await watch.wait()
        finally:
            gone.cancel()
