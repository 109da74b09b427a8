"""A worker's own numbers for /metrics (rows per step, resident pipelines, loads, evictions).

The API serves /metrics from the job store, so the worker's housekeeping thread writes these to the
store (``set_worker_metrics``) once a second; ``server/metrics.py`` renders them.
"""

from __future__ import annotations

import bisect
import threading

from server.metrics import ROWS_BUCKETS

HISTOGRAM_BUCKETS: dict[str, tuple[float, ...]] = {"rows_per_step": ROWS_BUCKETS}


class WorkerStats:
    """Thread-safe gauges, counters and histograms keyed by (name, endpoint)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gauges: dict[tuple[str, str], float] = {}
        self._hists: dict[tuple[str, str], tuple[list[int], float, int]] = {}

    def set(self, name: str, endpoint: str, value: float) -> None:
        with self._lock:
            self._gauges[(name, endpoint)] = float(value)

    def inc(self, name: str, endpoint: str, by: float = 1.0) -> None:
        with self._lock:
            self._gauges[(name, endpoint)] = self._gauges.get((name, endpoint), 0.0) + by

    def observe(self, name: str, endpoint: str, value: float) -> None:
        buckets = HISTOGRAM_BUCKETS[name]
        with self._lock:
            counts, total, n = self._hists.get((name, endpoint), ([0] * len(buckets), 0.0, 0))
            counts = list(counts)
            for i in range(bisect.bisect_left(buckets, value), len(buckets)):  # cumulative, as Prometheus counts
                counts[i] += 1
            self._hists[(name, endpoint)] = (counts, total + value, n + 1)

    def snapshot(self) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], tuple[list[int], float, int]]]:
        with self._lock:
            return dict(self._gauges), dict(self._hists)
