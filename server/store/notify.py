"""Change notifications between the API and its workers: wake-ups, never the source of truth.

A store publishes after each commit that someone may be waiting for (a job queued, started, logged,
finished; a webhook owed); waiters re-read the store when woken, and still re-check it at a slow
fallback interval, so a lost notification costs latency, never a job.

``LocalNotifier`` works between processes on one host: every subscriber binds a Unix datagram socket
in ``<dir>/<channel>/``, and a publish sends one datagram to each socket there (a socket whose owner
died is removed by the first publish that finds it refused). A PostgreSQL store implements the same
two calls with LISTEN/NOTIFY (the connection's file descriptor is the subscription's ``fileno``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import select
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol

# Channels and their payloads.
QUEUE = "queue"  # "<endpoint id>": a job became claimable (submitted, released, re-queued)
JOBS = "jobs"  # "<job id> <event>": a job changed (see the events below)
STARTED, LOG, DONE, WEBHOOK = "started", "log", "done", "webhook"  # WEBHOOK: an outbox row is due now
STATES = "states"  # alone on the jobs channel: a worker reported its pipelines' states (ready, failed...)
MISSED = "*"  # delivered instead of what may have been lost: anything may have changed, re-check it all

MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux
# Directory times have a coarse clock: a listing taken this soon after the last change may miss a change
# made in the same tick (same mtime), so it is not reused.
RACY_LISTING_NS = 100_000_000
MAX_DATAGRAM = 4096


def _queue_limit() -> int:
    """Datagrams a Unix socket queues before senders get EAGAIN (Linux default 10, often left so)."""
    try:
        return int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    except (OSError, ValueError):
        return 10


class Subscription(Protocol):
    def fileno(self) -> int:
        """Readable when a notification is pending (for ``loop.add_reader``)."""
        ...

    def drain(self) -> list[str]:
        """The pending payloads (one per line published), without blocking; ``MISSED`` among them when
        some may have been lost."""
        ...

    def wait(self, timeout: float) -> list[str]:
        """Block until a notification arrives (or ``wake`` is called) or ``timeout`` passes."""
        ...

    def wake(self) -> None:
        """Make the current or next ``wait`` return at once (from any thread or a signal handler)."""
        ...

    def close(self) -> None: ...


class Notifier(Protocol):
    def publish(self, channel: str, payload: str = "") -> None:
        """Best effort and non-blocking: a subscriber that is gone or far behind misses it.

        A payload with newlines is several payloads sent at once (subscribers get one per line).
        """
        ...

    def subscribe(self, channel: str) -> Subscription: ...


def _short_dir(directory: Path) -> Path:
    """``directory``, or a per-user stand-in under the temp dir when socket paths there would be too long."""
    directory = directory.resolve()
    if len(str(directory)) + 48 <= MAX_SOCKET_PATH:
        return directory
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"fal-onprem-{os.getuid()}" / digest


class LocalSubscription:
    """A publisher drops a datagram when this socket's queue is full; a drain that finds the queue full
    (so a drop was possible) reports ``MISSED``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._limit = _queue_limit()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.bind(str(path))

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> list[str]:
        out: list[str] = []
        received = 0
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except OSError:  # nothing pending (EAGAIN), or closed meanwhile
                return [*out, MISSED] if received >= self._limit else out
            received += 1
            if data:
                out += data.decode().split("\n")

    def wait(self, timeout: float) -> list[str]:
        with contextlib.suppress(ValueError, OSError):  # closed meanwhile
            select.select([self._sock], [], [], max(0.0, timeout))
        return self.drain()

    def wake(self) -> None:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.sendto(b"", str(self.path))

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class LocalNotifier:
    """One host, any number of processes: Unix datagram sockets under ``directory``."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = _short_dir(Path(directory))
        self._lock = threading.Lock()
        self._sender: socket.socket | None = None
        self._targets: dict[str, tuple[int, list[str]]] = {}  # channel -> (dir mtime_ns, socket paths)
        self._folders: dict[str, str] = {}  # channel -> its directory (a str: Path joins cost per publish)

    def subscribe(self, channel: str) -> LocalSubscription:
        folder = self.directory / channel
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return LocalSubscription(folder / f"{os.getpid()}-{secrets.token_hex(4)}")

    def _subscribers(self, channel: str) -> list[str]:
        """Socket paths of a channel, re-listed only when its directory changed (one stat per publish)."""
        folder = self._folders.get(channel)
        if folder is None:
            folder = self._folders[channel] = str(self.directory / channel)
        try:
            mtime = os.stat(folder).st_mtime_ns
        except FileNotFoundError:
            return []
        cached = self._targets.get(channel)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        paths = [entry.path for entry in os.scandir(folder)]
        if time.time_ns() - mtime > RACY_LISTING_NS:
            self._targets[channel] = (mtime, paths)
        return paths

    def publish(self, channel: str, payload: str = "") -> None:
        data = payload.encode()
        with self._lock:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            for path in self._subscribers(channel):
                try:
                    self._sender.sendto(data, path)
                except BlockingIOError:
                    pass  # its queue is full: it has wake-ups pending anyway
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        os.unlink(path)  # its process died without closing it
                except OSError:
                    pass  # never let a wake-up fail the store write that preceded it

    def close(self) -> None:
        with self._lock:
            if self._sender is not None:
                self._sender.close()
                self._sender = None
