"""The store's change notifications over PostgreSQL LISTEN/NOTIFY, for processes on many hosts.

The PostgreSQL store sends its notifications with ``pg_notify`` inside the transaction that made the
change, so they go out exactly when it commits (and never for a rolled-back one). A subscription holds
one dedicated connection that LISTENs; a thread moves what arrives into a queue and signals a pipe,
whose read end is the subscription's ``fileno``: it stays the same when the connection to the database
breaks and is re-made (with back-off), so an asyncio reader registered on it keeps working across a
database restart. Notifications sent while the connection was down are lost; waiters fall back to
re-reading the store at their slow interval, as with the local notifier.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
from typing import Any

from server.store.notify import MISSED

log = logging.getLogger("fal_onprem.store")

CHANNEL_PREFIX = "fal_onprem_"
RECONNECT_S = (0.2, 0.5, 1.0, 2.0, 5.0)


def pg_channel(channel: str) -> str:
    return CHANNEL_PREFIX + channel


class PostgresSubscription:
    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = pg_channel(channel)
        self._read, self._write = os.pipe()  # "notifications pending", for waiters
        self._stop_read, self._stop_write = os.pipe()  # "closing", for the listening thread
        for fd in (self._read, self._write, self._stop_read, self._stop_write):
            os.set_blocking(fd, False)
        self._pending: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._conn: Any = None
        self._connect()  # the first LISTEN is in place before subscribe() returns: nothing after it is missed
        self._thread = threading.Thread(target=self._listen, daemon=True, name=f"listen-{channel}")
        self._thread.start()

    def _connect(self) -> None:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True)
        conn.execute(f'LISTEN "{self.channel}"')
        self._conn = conn

    def _signal(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"\0")

    def _listen(self) -> None:
        attempt = 0
        while not self._closed.is_set():
            conn = self._conn
            try:
                if conn is None:
                    self._connect()
                    attempt = 0
                    self._pending.put(MISSED)  # what happened while we were away is unknown: re-check it all
                    self._signal()
                    continue
                ready, _, _ = select.select([conn.pgconn.socket, self._stop_read], [], [], 5.0)
                if self._closed.is_set():
                    return
                if not ready:
                    continue
                conn.pgconn.consume_input()
                got = False
                while (note := conn.pgconn.notifies()) is not None:
                    self._pending.put(note.extra.decode())
                    got = True
                if got:
                    self._signal()
                if conn.pgconn.status != 0:  # CONNECTION_OK
                    raise ConnectionError("connection lost")
            except Exception as exc:  # the database went away: re-connect with back-off
                if self._closed.is_set():
                    return
                log.warning("LISTEN %s: %s; re-connecting", self.channel, exc)
                with contextlib.suppress(Exception):
                    conn.close()
                self._conn = None
                self._closed.wait(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
                attempt += 1

    def fileno(self) -> int:
        return self._read

    def drain(self) -> list[str]:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read, 4096):
                pass
        out = []
        while True:
            try:
                out.append(self._pending.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: float) -> list[str]:
        with contextlib.suppress(ValueError, OSError):
            select.select([self._read], [], [], max(0.0, timeout))
        return self.drain()

    def wake(self) -> None:
        self._signal()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            os.write(self._stop_write, b"\0")
        self._thread.join(timeout=5)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        for fd in (self._read, self._write, self._stop_read, self._stop_write):
            with contextlib.suppress(OSError):
                os.close(fd)


class PostgresNotifier:
    """``publish`` through the store's pool (NOTIFY outside a store transaction); ``subscribe`` LISTENs."""

    def __init__(self, url: str, pool: Any) -> None:
        self.url = url
        self.pool = pool

    def publish(self, channel: str, payload: str = "") -> None:
        try:
            with self.pool.connection() as conn:
                conn.execute("SELECT pg_notify(%s, %s)", (pg_channel(channel), payload))
        except Exception as exc:  # a wake-up must never fail the caller
            log.debug("NOTIFY %s failed: %s", channel, exc)

    def subscribe(self, channel: str) -> PostgresSubscription:
        return PostgresSubscription(self.url, channel)

    def close(self) -> None:
        pass
