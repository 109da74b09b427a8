"""Per-item guard for the work a pipeline does on each item after its batched network pass."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pipelines.contract import BatchCancelled, ItemError

T = TypeVar("T")

log = logging.getLogger(__name__)


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
