"""Step-level vs whole-batch admission for a stepwise pipeline under Poisson arrivals.

Runs an in-process worker on the synthetic ``test/steps`` pipeline (each step sleeps ``--step-ms``, as a
device step would take its time regardless of which rows share it) twice with the same arrival schedule:
- ``whole_batch``: the same pipeline behind the closed-loop ``run`` (membership fixed when a batch starts,
  results returned when its longest member ends): what a diffusion pipeline without step scheduling gets;
- ``step_level``: the worker's ``StepLoop`` (jobs join at the next step boundary, leave when done).
Reports submit -> completion latency (p50/p99) and throughput. Bounded: ``--jobs`` arrivals per mode.

    python -m benchmarks.step_scheduling [--jobs 150] [--rate 4] [--step-ms 20]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from benchmarks.machine import machine_info, write_result
from benchmarks.server_overhead import percentile
from pipelines.contract import EndpointSpec, Pipeline, Prepared, Result, RunContext
from server import jobs
from server.config import PipelineSettings, Settings
from server.worker.runner import Loaded, Worker
from tests.support.steps_pipeline import StepsInput, StepsOutput, StepsPipeline

ENDPOINT = "test/steps"
STEP_COUNTS = (10, 20, 30)


class WholeBatchSteps(Pipeline):
    """The synthetic pipeline run as a closed loop: no job joins or leaves a running batch."""

    endpoint_id = ENDPOINT
    Input = StepsInput
    Output = StepsOutput
    max_batch = StepsPipeline.max_batch

    def __init__(self) -> None:
        self.inner = StepsPipeline()

    def batch_key(self, inp: BaseModel) -> Hashable:
        return self.inner.step_key(inp)

    def run(self, batch: list[Prepared], ctx: RunContext) -> list[Result]:
        return self.inner.run(batch, ctx)


def run_mode(mode: str, arrivals: list[tuple[float, int]], step_ms: int, data_dir: Path) -> dict[str, Any]:
    settings = Settings(data_dir=data_dir, pipelines={ENDPOINT: PipelineSettings()})
    worker = Worker(settings, worker_id=f"bench-{mode}")
    pipe = WholeBatchSteps() if mode == "whole_batch" else StepsPipeline()
    worker.loaded[ENDPOINT] = Loaded(ENDPOINT, pipe, StepsPipeline.max_batch, 0, cls=type(pipe))
    spec = EndpointSpec(ENDPOINT, StepsInput, StepsOutput, "tests.support.steps_pipeline:StepsPipeline")
    thread = threading.Thread(target=worker.serve_forever, daemon=True)
    thread.start()
    ids = []
    start = time.monotonic()
    for i, (at, steps) in enumerate(arrivals):
        time.sleep(max(0.0, start + at - time.monotonic()))
        body = StepsInput(seed=i, num_inference_steps=steps, step_ms=step_ms, sync_mode=True)
        job = jobs.submit(
            worker.store, spec, body, base="", key_id=None, priority=None, start_timeout=None, webhook_url=None
        )
        ids.append(job.id)
    deadline = time.monotonic() + 300
    done = []
    while time.monotonic() < deadline:
        done = [worker.store.get(i) for i in ids]
        if all(j is not None and j.status == "COMPLETED" for j in done):
            break
        time.sleep(0.1)
    worker.stop()
    thread.join(60)
    finished = [j for j in done if j is not None and j.status == "COMPLETED" and j.error is None]
    assert len(finished) == len(ids), f"{mode}: only {len(finished)}/{len(ids)} completed"
    latency = [(j.finished_at - j.created_at) * 1000 for j in finished]  # type: ignore[operator]
    admission = [j.metrics.get("admission_wait", j.metrics["queue_time"]) * 1000 for j in finished]
    span = max(j.finished_at for j in finished) - min(j.created_at for j in finished)  # type: ignore[type-var]
    return {
        "jobs": len(finished),
        "latency_p50_ms": round(percentile(latency, 50), 1),
        "latency_p99_ms": round(percentile(latency, 99), 1),
        "start_wait_p50_ms": round(percentile(admission, 50), 1),
        "start_wait_p99_ms": round(percentile(admission, 99), 1),
        "throughput_jobs_per_s": round(len(finished) / span, 2),
        "mean_batch_size": round(sum(j.metrics["batch_size"] for j in finished) / len(finished), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=150, help="arrivals per mode")
    parser.add_argument("--rate", type=float, default=4.0, help="mean arrivals per second (Poisson)")
    parser.add_argument("--step-ms", type=int, default=20, help="time one step takes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    arrivals, t = [], 0.0
    for _ in range(args.jobs):
        t += rng.expovariate(args.rate)
        arrivals.append((t, rng.choice(STEP_COUNTS)))
    results = {}
    for mode in ("whole_batch", "step_level"):
        with tempfile.TemporaryDirectory() as tmp:
            results[mode] = run_mode(mode, arrivals, args.step_ms, Path(tmp))
        print(mode, results[mode], flush=True)
    payload = {
        "benchmark": "step_scheduling",
        "pipeline": f"test/steps (synthetic; {args.step_ms} ms per step, steps drawn from {STEP_COUNTS}, "
        f"at most {StepsPipeline.max_batch} rows)",
        "arrivals": {"jobs": args.jobs, "poisson_rate_per_s": args.rate, "seed": args.seed},
        "machine": machine_info("cpu", ()),
        **results,
    }
    print(write_result("step_scheduling", "cpu", payload, args.out))


if __name__ == "__main__":
    main()
