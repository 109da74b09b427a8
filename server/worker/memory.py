"""The worker's GPU memory budget (ARCHITECTURE.md §4.2): which pipelines are resident, and what fits.

Pure bookkeeping (no torch): the runner loads, moves and frees; this module decides who goes. Pipelines
stay resident in least-recently-used order; when one must load and the budget cannot hold it next to the
others, the least recently used idle ones are evicted first. What the resident pipelines leave of the
budget is the activation budget that admission of batch rows (``row_bytes``) must stay within.
"""

from __future__ import annotations

import re
from collections import OrderedDict

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
DEFAULT_MARGIN_BYTES = 2 * 2**30  # CUDA context, allocator fragmentation, other processes' growth
DEFAULT_MARGIN_FRACTION = 0.05


def parse_bytes(value: str | int | float) -> int:
    """``24GB``, ``20GiB``, ``1.5e9`` or a plain number of bytes."""
    if isinstance(value, int | float):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-z]*)\s*", value.lower())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a memory size: {value!r} (e.g. 20GiB, 24GB, 1500000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def default_budget(free_bytes: int | None) -> int | None:
    """The device's free memory minus a margin; None (unlimited) when unknown (CPU)."""
    if free_bytes is None:
        return None
    margin = max(DEFAULT_MARGIN_BYTES, int(free_bytes * DEFAULT_MARGIN_FRACTION))
    return max(0, free_bytes - margin)


class Residency:
    """Resident pipelines (endpoint -> bytes), least recently used first, within ``budget`` (None: no limit)."""

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self._resident: OrderedDict[str, int] = OrderedDict()

    def __contains__(self, endpoint: str) -> bool:
        return endpoint in self._resident

    @property
    def used(self) -> int:
        return sum(self._resident.values())

    def bytes_of(self, endpoint: str) -> int:
        return self._resident.get(endpoint, 0)

    def add(self, endpoint: str, nbytes: int) -> None:
        self._resident[endpoint] = nbytes
        self._resident.move_to_end(endpoint)

    def remove(self, endpoint: str) -> None:
        self._resident.pop(endpoint, None)

    def touch(self, endpoint: str) -> None:
        if endpoint in self._resident:
            self._resident.move_to_end(endpoint)

    def activation_room(self) -> int | None:
        """What the resident pipelines leave for running rows; None when unlimited."""
        return None if self.budget is None else max(0, self.budget - self.used)

    def fits(self, nbytes: int) -> bool:
        return self.budget is None or self.used + nbytes <= self.budget

    def victims(self, need: int, keep: str) -> list[str]:
        """Least recently used pipelines (never ``keep``) to evict so that ``need`` more bytes fit. May
        return every other pipeline and still not make room: the caller then loads anyway and lets the
        device decide (the estimate may be high)."""
        if self.budget is None:
            return []
        out, used = [], self.used
        for endpoint, nbytes in self._resident.items():
            if used + need <= self.budget:
                break
            if endpoint != keep and nbytes > 0:  # evicting what holds nothing frees nothing
                out.append(endpoint)
                used -= nbytes
        return out
