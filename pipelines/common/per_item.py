"""Per-item guard for the work a pipeline does on each item after its batched network pass, and a shared
thread pool that runs those finish steps of a batch concurrently."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

from pipelines.contract import BatchCancelled, ItemError

T = TypeVar("T")
X = TypeVar("X")

log = logging.getLogger(__name__)

# Drawing, warping and PNG/JPEG encoding (cv2, PIL, zlib) release the GIL, so a few threads overlap them.
MAX_FINISH_THREADS = 8

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def finish_item(item: int, finish: Callable[[], T], what: str) -> T | ItemError:
    """``finish()``, or the ItemError that fails this item alone when it raises.

    Without it, one item's failure in drawing / paste-back / saving would fail the whole batch, and the
    worker would re-run every item of it on its own. An ``ItemError`` raised inside (e.g. by
    ``ctx.save_image``) is kept as is; cancelling the batch still propagates.
    """
    try:
        return finish()
    except BatchCancelled:
        raise
    except ItemError as err:
        return err
    except Exception as exc:
        log.exception("item %d: %s failed", item, what)
        return ItemError(500, f"{what} failed: {exc}", "internal_server_error")


def finish_threads() -> int:
    return min(MAX_FINISH_THREADS, os.cpu_count() or 1)


def _finish_pool() -> ThreadPoolExecutor:
    # created on first use: an import must not start threads (and a forked worker gets its own pool)
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(finish_threads(), thread_name_prefix="finish")
        return _pool


def finish_all(items: Sequence[X], finish: Callable[[int, X], T], what: str) -> list[T | ItemError]:
    """``finish(i, item)`` for every item, concurrently on the shared pool, each guarded by ``finish_item``.

    Results keep the items' order. ``finish`` runs on pool threads, so whatever it calls on the RunContext
    (``log``, ``save_image``) must be thread-safe. Every item is finished before a ``BatchCancelled`` (or any
    other exception that escapes ``finish_item``) of the first such item is re-raised.
    """
    if len(items) <= 1 or finish_threads() == 1:
        return [finish_item(i, lambda i=i, x=x: finish(i, x), what) for i, x in enumerate(items)]
    pool = _finish_pool()
    futures = [pool.submit(finish_item, i, lambda i=i, x=x: finish(i, x), what) for i, x in enumerate(items)]
    wait(futures)
    return [f.result() for f in futures]
