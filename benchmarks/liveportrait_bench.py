"""LivePortrait throughput: images/s of ``LivePortraitPipeline.run`` at several batch sizes.

    python benchmarks/liveportrait_bench.py                                   # random_full, CPU, short
    python benchmarks/liveportrait_bench.py --device cuda --batch-sizes 1 4 16 --repeats 5
    python benchmarks/liveportrait_bench.py --device cuda --dtype float16     # upstream's default precision

``random_full`` = the real network sizes with seeded random weights; the face models are the tiny
stand-ins (``--source real`` uses the real files, which also makes ``prepare`` representative).
``run`` (F, M, editing maths, W, G, paste-back, no image encoding) is timed after one warm-up batch;
``prepare`` (face detection, crop, mask) is timed per image. Each request has different knobs.
Results go to ``benchmarks/results/<date>_<device>_liveportrait.json`` with the machine description.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.contract import WeightSource  # noqa: E402
from pipelines.liveportrait.pipeline import LivePortraitPipeline  # noqa: E402
from pipelines.liveportrait.schema import LivePortraitImageInput  # noqa: E402


class NullContext:
    """RunContext that keeps nothing and skips encoding (the worker's job, not the model's)."""

    def log(self, message: str, item: int | None = None, level: str = "INFO") -> None: ...

    def progress(self, step: int, total: int) -> None: ...

    def is_cancelled(self, item: int) -> bool:
        return False

    def seed(self, item: int) -> int:
        return item

    def save_image(self, item: int, image: Any, output_format: str = "png") -> dict[str, Any]:
        height, width = np.asarray(image).shape[:2]
        return {"url": "about:blank", "content_type": "image/jpeg", "width": width, "height": height}


def requests(n: int) -> list[LivePortraitImageInput]:
    knobs = [dict(smile=0.8), dict(blink=-8), dict(aaa=40, rotate_yaw=8), dict(wink=6, pupil_x=10)]
    return [LivePortraitImageInput(image_url="x", **knobs[i % len(knobs)]) for i in range(n)]


def machine(device: str) -> dict[str, Any]:
    import cv2
    import onnxruntime as ort

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],  # CPU shared with other jobs?
    }
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    info["cpu"] = model.group(1).strip() if model else platform.processor()
    info["cpu_count"] = cpuinfo.count("processor\t:") or None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def device_label(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    return re.sub(r"[^a-z0-9]+", "-", name.removeprefix("nvidia ")).strip("-")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--source", default="random_full", choices=["random_full", "tiny", "real"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=1, help="timed batches per batch size")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    source = {"random_full": WeightSource.random_full, "tiny": WeightSource.tiny, "real": WeightSource.real}[
        args.source
    ]()
    t0 = time.perf_counter()
    pipe = LivePortraitPipeline.load(source, device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t0

    import skimage.data

    photo = Image.fromarray(skimage.data.astronaut())
    prep_times, prepared = [], []
    for inp in requests(max(args.batch_sizes)):
        t = time.perf_counter()
        prepared.append(pipe.prepare(inp, lambda url, loc: photo))
        prep_times.append(time.perf_counter() - t)

    ctx = NullContext()
    results = []
    for bs in args.batch_sizes:
        batch = prepared[:bs]
        pipe.run(batch, ctx)  # warm-up (cudnn autotune, allocator)
        sync(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            pipe.run(batch, ctx)
            sync(args.device)
            times.append(time.perf_counter() - t)
        median = statistics.median(times)
        row = {
            "batch_size": bs,
            "seconds_per_batch": round(median, 4),
            "images_per_s": round(bs / median, 3),
            "runs": len(times),
        }
        if args.device.startswith("cuda"):
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        results.append(row)
        print(json.dumps(row), flush=True)

    report = {
        "benchmark": "liveportrait",
        "endpoint": "fal-ai/live-portrait/image",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": args.source,
        "device": args.device,
        "dtype": args.dtype,
        "load_s": round(load_s, 2),
        "prepare_s_per_image": round(statistics.median(prep_times), 4),
        "image": "skimage astronaut 512x512, paste-back on, output 512x512",
        "note": "run() = F, M, edit maths, stitching, W, G, paste-back; no image encoding. Face models are "
        "the tiny stand-ins unless source is real.",
        "results": results,
        "machine": machine(args.device),
    }
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"{dt.date.today().isoformat()}_{device_label(args.device)}_liveportrait.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
