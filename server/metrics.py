"""Prometheus metrics, read from the job store's counters at scrape time.

The store is shared by the API and every worker process, so reading it gives one consistent view
without a metrics gateway.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from server.store import JobStore
from server.store.base import BATCH_BUCKETS, HISTOGRAM_BUCKETS

ROWS_BUCKETS = BATCH_BUCKETS
HISTOGRAMS = (
    ("queue_time", "fal_onprem_queue_wait_seconds", "Time from submit to start", HISTOGRAM_BUCKETS["queue_time"]),
    (
        "inference_time",
        "fal_onprem_run_seconds",
        "Run time of the batch a request ran in",
        HISTOGRAM_BUCKETS["inference_time"],
    ),
    ("batch_size", "fal_onprem_batch_size", "Size of the batch a request ran in", HISTOGRAM_BUCKETS["batch_size"]),
    (
        "admission_wait",
        "fal_onprem_admission_wait_seconds",
        "Time from submit to a request's first denoising step (stepwise pipelines)",
        HISTOGRAM_BUCKETS["admission_wait"],
    ),
)
# Numbers the workers report themselves (server/worker/stats.py): name -> (metric, kind, help).
WORKER_GAUGES = {
    "pipeline_resident": ("fal_onprem_pipeline_resident", "gauge", "1 while the pipeline's weights are on the device"),
    "pipeline_memory_bytes": ("fal_onprem_pipeline_memory_bytes", "gauge", "Device memory a resident pipeline holds"),
    "pipeline_loads": ("fal_onprem_pipeline_loads", "counter", "Pipeline loads onto the device"),
    "pipeline_evictions": ("fal_onprem_pipeline_evictions", "counter", "Pipelines evicted to make room for another"),
}
WORKER_HISTOGRAMS = (("rows_per_step", "fal_onprem_rows_per_step", "Batch rows in each denoising step", ROWS_BUCKETS),)


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

        for field, metric, doc, buckets in HISTOGRAMS:
            hist = HistogramMetricFamily(metric, doc, labels=["endpoint"])
            for endpoint, counts, total, n in self.store.metric_histogram(field, buckets):
                le = [(str(float(b)), c) for b, c in zip(buckets, counts, strict=True)] + [("+Inf", n)]
                hist.add_metric([endpoint], le, total)
            yield hist

        gpu = GaugeMetricFamily(
            "fal_onprem_gpu_memory_bytes", "GPU memory held by a worker's PyTorch allocator", labels=["worker", "kind"]
        )
        for row in self.store.worker_stats():
            for kind in ("allocated", "reserved"):
                value = row[f"gpu_memory_{kind}"]
                if value is not None:
                    gpu.add_metric([row["worker_id"], kind], float(value))
        yield gpu
        yield from self.worker_metrics()

    def worker_metrics(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for name, (metric, kind, doc) in WORKER_GAUGES.items():
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            families[name] = family(metric, doc, labels=["endpoint", "worker"])
        budget = GaugeMetricFamily(
            "fal_onprem_gpu_memory_budget_bytes", "A worker's GPU memory budget (pipelines + rows)", labels=["worker"]
        )
        for worker, name, endpoint, value in self.store.worker_gauges():
            if name == "gpu_memory_budget_bytes":
                budget.add_metric([worker], value)
            elif name in families:
                families[name].add_metric([endpoint, worker], value)
        yield from families.values()
        yield budget
        for name, metric, doc, buckets in WORKER_HISTOGRAMS:
            hist = HistogramMetricFamily(metric, doc, labels=["endpoint"])
            for endpoint, counts, total, n in self.store.worker_histograms(name):
                le = [(str(float(b)), c) for b, c in zip(buckets, counts, strict=True)] + [("+Inf", n)]
                hist.add_metric([endpoint], le, total)
            yield hist


def render_metrics(store: JobStore) -> tuple[bytes, str]:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    return generate_latest(registry), CONTENT_TYPE_LATEST
