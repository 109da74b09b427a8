"""A worker's id in the job store: ``host:pid:device``, so its supervisor can name it after it died."""

from __future__ import annotations

import os
import socket


def worker_id(device: str, pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}:{device}"
