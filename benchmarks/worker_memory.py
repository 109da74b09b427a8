"""Worker memory under maximum-size inputs (issue #11): peak RSS while a worker runs 64 jobs whose images
are at the 40 MP limit (6320x6320 PNGs of ~100 KB, 120 MB each once decoded).

Each endpoint runs in its own child process (tiny weights, so the figure is the inputs' cost, not the
models'): the worker is built and loaded, its RSS noted (``baseline``), the peak reset, then 64 jobs are
queued and served by the real claim / prefetch / prepare / run loop. ``peak_above_baseline`` is what the
inputs cost at most; the claim: it stays under 2 GB whatever the queue holds.

    flock /tmp/bigmem.lock python -m benchmarks.worker_memory [--jobs 64] [--side 6320]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ENDPOINTS = ("fal-ai/dwpose", "fal-ai/live-portrait/image")
GiB = 1024**3


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _big_png(side: int) -> str:
    import numpy as np
    from PIL import Image

    pixels = np.full((side, side, 3), 128, np.uint8)
    pixels[:256, :256] = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def child(endpoint: str, jobs: int, side: int, max_prepared_bytes: int) -> dict[str, Any]:
    from pipelines import registry
    from pipelines.contract import WeightSource
    from server.config import Settings
    from server.store import Job
    from server.worker.runner import Loaded, Worker

    uri = _big_png(side)
    data_dir = Path(tempfile.mkdtemp(prefix="worker-memory-"))
    worker = Worker(Settings(data_dir=data_dir, weights_source="tiny", max_prepared_bytes=max_prepared_bytes))
    cls = registry.pipeline_class(registry.endpoints()[endpoint])
    worker.loaded[endpoint] = Loaded(endpoint, cls.load(WeightSource.tiny(0)), cls.max_batch, cls.max_wait_ms)
    inp: dict[str, Any] = {"image_url": uri}
    if endpoint == "fal-ai/live-portrait/image":  # tiny stand-in detectors find no face: edit the whole image
        inp.update(enable_safety_checker=False, flag_do_crop=False)
    ids = [str(uuid.uuid4()) for _ in range(jobs)]
    for job_id in ids:
        worker.store.create(Job(id=job_id, endpoint=endpoint, input=inp))

    baseline = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak from here on
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            samples.append(_status("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    server = threading.Thread(target=worker.serve_forever, daemon=True)
    started = time.monotonic()
    server.start()
    while time.monotonic() - started < 1800:
        states = [worker.store.get(j) for j in ids]
        if all(s is not None and s.status == "COMPLETED" for s in states):
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    worker.stop()
    server.join(timeout=60)
    done.set()
    peak = max(_status("VmHWM"), *samples)
    errors = [s.error for s in states if s is not None and s.error]
    return {
        "endpoint": endpoint,
        "jobs": jobs,
        "image": f"{side}x{side} PNG, {len(uri) * 3 // 4 // 1024} KB",
        "max_batch": cls.max_batch,
        "max_prepared_bytes": max_prepared_bytes,
        "baseline_rss_mb": round(baseline / 2**20),
        "peak_rss_mb": round(peak / 2**20),
        "peak_above_baseline_mb": round((peak - baseline) / 2**20),
        "completed": sum(1 for s in states if s is not None and s.status == "COMPLETED"),
        "errors": errors[:3],
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--side", type=int, default=6320)
    parser.add_argument("--max-prepared-bytes", type=int, default=GiB)
    parser.add_argument("--endpoint", action="append", choices=ENDPOINTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.jobs, args.side, args.max_prepared_bytes)))
        return
    from benchmarks.machine import machine_info, write_result

    runs = []
    for endpoint in args.endpoint or ENDPOINTS:
        cmd = [sys.executable, "-m", "benchmarks.worker_memory", "--child", endpoint, "--jobs", str(args.jobs),
               "--side", str(args.side), "--max-prepared-bytes", str(args.max_prepared_bytes)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    payload = {
        "benchmark": "worker_memory",
        "what": "peak worker RSS while serving maximum-size images (tiny weights: the inputs' cost)",
        "machine": machine_info("cpu", ("numpy", "pillow", "opencv-python-headless", "onnxruntime")),
        "runs": runs,
    }
    print(write_result("worker_memory", "cpu", payload, args.out))


if __name__ == "__main__":
    main()
