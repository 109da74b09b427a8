"""The worker's memory bookkeeping: budget parsing, the default, least-recently-used eviction."""

from __future__ import annotations

import pytest

from server.worker.memory import DEFAULT_MARGIN_BYTES, Residency, default_budget, parse_bytes


def test_parse_bytes() -> None:
    assert parse_bytes("20GiB") == 20 * 2**30
    assert parse_bytes("24GB") == 24 * 10**9
    assert parse_bytes("1.5e9") == 1_500_000_000
    assert parse_bytes(" 512 MiB ") == 512 * 2**20
    with pytest.raises(ValueError, match="not a memory size"):
        parse_bytes("lots")


def test_default_budget_keeps_a_margin_and_is_unlimited_without_a_device() -> None:
    assert default_budget(None) is None
    assert default_budget(80 * 2**30) == 80 * 2**30 - int(80 * 2**30 * 0.05)
    assert default_budget(10 * 2**30) == 10 * 2**30 - DEFAULT_MARGIN_BYTES
    assert default_budget(2**30) == 0


def test_least_recently_used_pipelines_are_evicted_first_and_never_the_one_loading() -> None:
    r = Residency(budget=100)
    r.add("nothing", 0)
    r.add("a", 40)
    r.add("b", 40)
    assert r.activation_room() == 20 and r.fits(20) and not r.fits(21)
    r.touch("a")  # b is now the least recently used
    assert r.victims(30, keep="c") == ["b"]
    assert r.victims(70, keep="c") == ["b", "a"]
    assert r.victims(70, keep="b") == ["a"]  # may not make room: the caller loads anyway
    assert r.victims(10, keep="c") == []
    assert Residency(budget=None).victims(10**12, keep="x") == []
    assert Residency(budget=None).activation_room() is None
