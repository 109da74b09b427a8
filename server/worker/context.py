"""The worker's ``RunContext``: logs, progress, cancellation, seeds and outputs, addressed by item key.

For a one-shot ``run`` batch the keys are the items' positions (``BatchContext``); a stepwise batch
(``StepContext``) gives each job a key when it joins and forgets it when it leaves, so jobs come and go
at step boundaries while the context lives on.
"""

from __future__ import annotations

import base64
import itertools
import logging
import random
import threading
import time
from typing import Any

from pipelines.common.image_io import encode_image, to_pil
from pipelines.contract import BatchCancelled
from server.files import Files
from server.store import Job, JobStore, LogEntry

log = logging.getLogger("fal_onprem.worker")

CANCEL_POLL_S = 0.2
# The lines a batch logs in its first LOG_BUFFER_S wait to be written with its completion (a fast batch
# costs one transaction, not one per line); later lines are written as they come (progress of long work),
# and the worker's housekeeping writes the early lines of a batch that went silent.
LOG_BUFFER_S = 0.05
MAX_SEED = 2**31 - 1


def choose_seed(inp: dict[str, Any]) -> int:
    seed = inp.get("seed")
    return int(seed) if seed is not None else random.randint(0, MAX_SEED)


class JobContext:
    """A ``RunContext`` over jobs addressed by key."""

    def __init__(self, store: JobStore, files: Files, jobs: dict[int, Job]) -> None:
        self.store = store
        self.files = files
        self.jobs = dict(jobs)
        self.seeds = {key: choose_seed(job.input) for key, job in jobs.items()}
        self._cancelled: set[str] = set()
        self._last_poll = 0.0
        self._pending: list[tuple[str, LogEntry]] = []  # (job id, line) not yet in the store
        # Held while a flush writes, so lines taken later (with the completion) never land before them.
        self._pending_lock = threading.RLock()
        self._oldest_pending = 0.0  # monotonic time the oldest buffered line was logged
        self._created = time.monotonic()

    # -- logs and progress
    def log(self, message: str, item: int | None = None, level: str = "INFO") -> None:
        targets = list(self.jobs.values()) if item is None else [self.jobs[item]]
        if targets:
            entry = LogEntry(message, level)
            with self._pending_lock:
                if not self._pending:
                    self._oldest_pending = time.monotonic()
                self._pending += [(job.id, entry) for job in targets]
            long_work = time.monotonic() - self._created >= LOG_BUFFER_S
            self._mirror(targets, message, level, long_work)
            if long_work:
                self.flush()

    @staticmethod
    def _mirror(targets: list[Job], message: str, level: str, long_work: bool) -> None:
        """Repeat a job's line in the process log: INFO lines only once the batch has run ``LOG_BUFFER_S``
        (progress of long work), DEBUG before that (a fast request would otherwise cost several formatted
        lines there; clients read them per request); other levels as they are."""
        number = logging.getLevelName(level)
        if not isinstance(number, int):
            number = logging.INFO
        if number == logging.INFO and not long_work:
            number = logging.DEBUG
        if log.isEnabledFor(number):
            log.log(number, "%s [%s] %s", targets[0].endpoint, ",".join(j.id[:8] for j in targets), message)

    def take_logs(self, job_ids: set[str] | None = None) -> list[tuple[str, LogEntry]]:
        """The buffered lines (of ``job_ids`` only, if given), removed from the buffer: the caller writes
        them, e.g. in the transaction that completes those jobs."""
        with self._pending_lock:
            if job_ids is None:
                taken, self._pending = self._pending, []
            else:
                taken = [p for p in self._pending if p[0] in job_ids]
                self._pending = [p for p in self._pending if p[0] not in job_ids]
        return taken

    def flush(self, older_than: float = 0.0) -> None:
        """Write the buffered lines when the oldest of them waits at least ``older_than`` seconds."""
        with self._pending_lock:
            if self._pending and time.monotonic() - self._oldest_pending >= older_than:
                self.store.append_logs(self.take_logs())

    def progress(self, step: int, total: int, item: int | None = None) -> None:
        self.log(f"Step {step}/{total}", item)
        if item is not None:
            return
        self._poll_cancel(force=True)
        if self.jobs and all(j.id in self._cancelled for j in self.jobs.values()):
            raise BatchCancelled()

    # -- cancellation
    def _poll_cancel(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_poll > CANCEL_POLL_S:
            self._cancelled |= self.store.is_cancel_requested([j.id for j in self.jobs.values()])
            self._last_poll = now

    def is_cancelled(self, item: int) -> bool:
        self._poll_cancel()
        return self.jobs[item].id in self._cancelled

    # -- per-item values
    def seed(self, item: int) -> int:
        return self.seeds[item]

    def save_image(self, item: int, image: Any, output_format: str = "png") -> dict[str, Any]:
        pil = to_pil(image)
        data, content_type = encode_image(pil, output_format)
        job = self.jobs[item]
        ext = "jpg" if output_format == "jpeg" else output_format
        name = f"{job.id[:8]}-{int(time.time() * 1000) % 100000}.{ext}"
        fields = {
            "content_type": content_type,
            "file_name": name,
            "file_size": len(data),
            "width": pil.width,
            "height": pil.height,
        }
        if job.input.get("sync_mode"):
            return {"url": f"data:{content_type};base64,{base64.b64encode(data).decode()}", **fields}
        stored = self.files.save(data, content_type, name)
        return {"url": stored.url(job.base_url), **fields}


class BatchContext(JobContext):
    """The context of one ``run`` batch: items are keyed by their position."""

    def __init__(self, store: JobStore, files: Files, jobs: list[Job]) -> None:
        super().__init__(store, files, dict(enumerate(jobs)))


class StepContext(JobContext):
    """The context of a stepwise batch: jobs join (``add``) and leave (``remove``) at step boundaries."""

    _keys = itertools.count(1)  # unique for the worker's lifetime, so a late call never hits another job

    def __init__(self, store: JobStore, files: Files) -> None:
        super().__init__(store, files, {})

    def add(self, job: Job) -> int:
        key = next(self._keys)
        self.jobs[key] = job
        self.seeds[key] = choose_seed(job.input)
        return key

    def remove(self, key: int) -> None:
        self.jobs.pop(key, None)
        self.seeds.pop(key, None)
