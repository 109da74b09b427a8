"""Prometheus metrics, computed from the job store at scrape time.

The store is shared by the API and every worker process, so reading it gives one consistent view
without a metrics gateway.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.store import JobStore


class StoreCollector(Collector):
    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("fal_onprem_queue_depth", "Queued requests", labels=["endpoint"])
        for endpoint, n in self.store.queue_depths().items():
            depth.add_metric([endpoint], n)
        yield depth

        done = CounterMetricFamily(
            "fal_onprem_requests_completed",
            "Finished requests by error type ('' = success)",
            labels=["endpoint", "error_type"],
        )
        for row in self.store.completed_stats():
            done.add_metric([row["endpoint"], row["error_type"]], row["n"])
        yield done

        ready = GaugeMetricFamily(
            "fal_onprem_pipeline_ready",
            "1 when the worker has the pipeline loaded",
            labels=["endpoint", "worker"],
        )
        for s in self.store.pipeline_states():
            ready.add_metric([s.endpoint, s.worker_id], 1.0 if s.state == "ready" else 0.0)
        yield ready


def render_metrics(store: JobStore) -> tuple[bytes, str]:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    return generate_latest(registry), CONTENT_TYPE_LATEST
