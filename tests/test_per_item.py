"""finish_all: the shared per-item finish step of DWPose and LivePortrait runs items concurrently, keeps their
order, fails only the item that raises, and still propagates a cancelled batch."""

from __future__ import annotations

import threading
import time

import pytest

from pipelines.common import per_item
from pipelines.common.per_item import finish_all
from pipelines.contract import BatchCancelled, ItemError


def test_results_keep_the_items_order_when_later_items_finish_first():
    delays = [0.05, 0.0, 0.03, 0.0, 0.01]

    def finish(i: int, delay: float) -> tuple[int, float]:
        time.sleep(delay)
        return i, delay

    assert finish_all(delays, finish, "sleeping") == list(enumerate(delays))


def test_one_items_exception_becomes_that_items_error_only():
    own = ItemError(422, "no face", "face_not_found")

    def finish(i: int, x: str) -> str:
        if x == "boom":
            raise OSError("disk full")
        if x == "own":
            raise own
        return x.upper()

    out = finish_all(["a", "boom", "own", "b"], finish, "saving")
    assert out[0] == "A" and out[3] == "B"
    assert isinstance(out[1], ItemError)
    assert (out[1].status_code, out[1].error_type) == (500, "internal_server_error")
    assert out[1].detail == "saving failed: disk full"
    assert out[2] is own


def test_a_cancelled_batch_propagates_after_every_item_finished():
    done: list[int] = []

    def finish(i: int, x: int) -> int:
        if i == 0:
            raise BatchCancelled()
        time.sleep(0.02)
        done.append(i)
        return x

    with pytest.raises(BatchCancelled):
        finish_all([0, 1, 2, 3], finish, "drawing")
    assert sorted(done) == [1, 2, 3]  # nothing left running behind the cancelled batch


@pytest.mark.skipif(per_item.finish_threads() < 2, reason="one CPU: finish_all runs items sequentially")
def test_items_overlap_on_the_shared_pool():
    barrier = threading.Barrier(2, timeout=5)  # sequential finishing would never get both items here

    def finish(i: int, x: int) -> str:
        barrier.wait()
        return threading.current_thread().name

    names = finish_all([0, 1], finish, "waiting")
    assert all(isinstance(n, str) and n.startswith("finish") for n in names), names
    assert len(set(names)) == 2


def test_a_single_item_stays_on_the_calling_thread():
    assert finish_all([0], lambda i, x: threading.current_thread(), "x") == [threading.current_thread()]


def test_one_thread_means_sequential(monkeypatch):
    monkeypatch.setattr(per_item, "finish_threads", lambda: 1)
    caller = threading.current_thread()
    assert finish_all([0, 1, 2], lambda i, x: threading.current_thread() is caller, "x") == [True] * 3
