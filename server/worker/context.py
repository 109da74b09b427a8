"""The worker's ``RunContext`` for one batch: logs, progress, cancellation, seeds, outputs."""

from __future__ import annotations

import base64
import logging
import random
import time
from typing import Any

from pipelines.common.image_io import encode_image, to_pil
from pipelines.contract import BatchCancelled
from server.files import Files
from server.store import Job, JobStore, LogEntry

log = logging.getLogger("fal_onprem.worker")

CANCEL_POLL_S = 0.2
MAX_SEED = 2**31 - 1


def choose_seed(inp: dict[str, Any]) -> int:
    seed = inp.get("seed")
    return int(seed) if seed is not None else random.randint(0, MAX_SEED)


class BatchContext:
    def __init__(self, store: JobStore, files: Files, jobs: list[Job]) -> None:
        self.store = store
        self.files = files
        self.jobs = jobs
        self.seeds = [choose_seed(j.input) for j in jobs]
        self._cancelled: set[str] = set()
        self._last_poll = 0.0

    # -- logs and progress
    def log(self, message: str, item: int | None = None, level: str = "INFO") -> None:
        targets = self.jobs if item is None else [self.jobs[item]]
        for job in targets:
            self.store.append_log(job.id, LogEntry(message, level))
        log.info("%s [%s] %s", self.jobs[0].endpoint, ",".join(j.id[:8] for j in targets), message)

    def progress(self, step: int, total: int, item: int | None = None) -> None:
        self.log(f"Step {step}/{total}", item)
        if item is not None:
            return
        self._poll_cancel(force=True)
        if len(self._cancelled) == len(self.jobs):
            raise BatchCancelled()

    # -- cancellation
    def _poll_cancel(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_poll > CANCEL_POLL_S:
            self._cancelled |= self.store.is_cancel_requested([j.id for j in self.jobs])
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
