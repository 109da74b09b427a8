"""DWPose throughput: images/s of ``DWPosePipeline.run`` at several batch sizes.

    python benchmarks/dwpose_bench.py                                  # tiny models, CPU, short
    python benchmarks/dwpose_bench.py --source real --device cuda      # real ONNX files on a GPU

Each batch holds distinct photos (skimage samples, cycled), so detections and crop counts vary like real
traffic. ``run`` is timed with a context that does not encode PNGs (encoding is the worker's job and is
reported separately), ``prepare`` (decode-free resize + letterbox) is timed per image. Results go to
``benchmarks/results/<date>_<device>_dwpose.json`` with the machine description.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.common.image_io import encode_image  # noqa: E402
from pipelines.contract import WeightSource  # noqa: E402
from pipelines.dwpose.pipeline import DWPosePipeline  # noqa: E402
from pipelines.dwpose.schema import DWPoseInput  # noqa: E402


class NullContext:
    """RunContext that keeps nothing and skips encoding."""

    def log(self, message: str, item: int | None = None, level: str = "INFO") -> None: ...

    def progress(self, step: int, total: int) -> None: ...

    def is_cancelled(self, item: int) -> bool:
        return False

    def seed(self, item: int) -> int:
        return item

    def save_image(self, item: int, image: Any, output_format: str = "png") -> dict[str, Any]:
        height, width = np.asarray(image).shape[:2]
        return {"url": "about:blank", "content_type": "image/png", "width": width, "height": height}


def photos() -> list[Image.Image]:
    import skimage.data as sd

    arrays = [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket(), sd.camera(), sd.immunohistochemistry()]
    return [Image.fromarray(a if a.ndim == 3 else np.stack([a] * 3, -1)).convert("RGB") for a in arrays]


def machine(device: str, pipe: DWPosePipeline) -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": pipe.pose_model.session.get_providers(),
        "numpy": np.__version__,
    }
    try:
        import cv2
        import torch

        info["torch"], info["opencv"] = torch.__version__, cv2.__version__
    except ImportError:
        pass
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    match = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    info["cpu"] = match.group(1).strip() if match else platform.processor()
    info["cpu_count"] = len(re.findall(r"^processor\s*:", cpuinfo, flags=re.M)) or None
    if hasattr(os, "getloadavg"):  # CPU numbers on a shared machine are only as good as its load
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    if device.startswith("cuda"):
        try:
            gpu = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            info["gpu"] = gpu
        except (OSError, subprocess.CalledProcessError):
            info["gpu"] = None
    return info


def bench(pipe: DWPosePipeline, batch: int, iters: int, warmup: int, mode: str) -> dict[str, Any]:
    images = photos()
    inputs = [DWPoseInput(image_url=f"https://x/{i}.png", draw_mode=mode) for i in range(batch)]
    t0 = time.perf_counter()
    prepared = [pipe.prepare(inp, lambda url, loc, i=i: images[i % len(images)]) for i, inp in enumerate(inputs)]
    prepare_s = (time.perf_counter() - t0) / batch
    ctx = NullContext()
    for _ in range(warmup):
        pipe.run(prepared, ctx)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        pipe.run(prepared, ctx)
        times.append(time.perf_counter() - t0)
    people = sum(len(p) for p in pipe.estimate([p.extra for p in prepared]))
    median = statistics.median(times)
    return {
        "batch": batch,
        "iters": iters,
        "people_in_batch": people,
        "run_s_median": round(median, 5),
        "run_s_min": round(min(times), 5),
        "images_per_s": round(batch / median, 2),
        "prepare_ms_per_image": round(prepare_s * 1000, 2),
    }


def bench_models(pipe: DWPosePipeline, batch: int, iters: int, people_per_image: int = 2) -> dict[str, Any]:
    """The two networks alone: ``batch`` letterboxed images, ``people_per_image * batch`` crops in one call.

    Meaningful for every weight source (random weights rarely detect anyone, so the end-to-end number of
    ``random_full`` mostly times the detector).
    """
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, 3, 640, 640)).astype(np.float32)
    crops = rng.standard_normal((batch * people_per_image, 3, 384, 288)).astype(np.float32)
    timings = {}
    for name, model, x in (("detector", pipe.det_model, images), ("pose", pipe.pose_model, crops)):
        model(x)  # warm-up (and engine build for TensorRT)
        runs = []
        for _ in range(iters):
            t0 = time.perf_counter()
            model(x)
            runs.append(time.perf_counter() - t0)
        timings[name] = statistics.median(runs)
    return {
        "batch": batch,
        "detector_images_per_s": round(batch / timings["detector"], 2),
        "detector_batched": pipe.det_model.dynamic_batch,
        "pose_crops": batch * people_per_image,
        "pose_crops_per_s": round(batch * people_per_image / timings["pose"], 2),
    }


def png_encode_ms(pipe: DWPosePipeline) -> float:
    image = np.zeros((683, 512, 3), np.uint8)
    image[100:400:7, 50:450:3] = 255
    t0 = time.perf_counter()
    for _ in range(5):
        encode_image(image, "png")
    return round((time.perf_counter() - t0) / 5 * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["tiny", "real", "random_full"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--mode", default="full-pose")
    parser.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/...)")
    args = parser.parse_args()

    source = {
        "tiny": WeightSource.tiny(),
        "real": WeightSource.real(args.weights_dir),
        "random_full": WeightSource.random_full(),
    }[args.source]
    t0 = time.perf_counter()
    pipe = DWPosePipeline.load(source, device=args.device)
    load_s = time.perf_counter() - t0
    results = [bench(pipe, b, args.iters, args.warmup, args.mode) for b in args.batches]
    models = [bench_models(pipe, b, args.iters) for b in args.batches]
    for r in results:
        print(
            f"batch {r['batch']:>3}: {r['images_per_s']:>8.2f} images/s "
            f"(run {r['run_s_median'] * 1000:.1f} ms, {r['people_in_batch']} people, "
            f"prepare {r['prepare_ms_per_image']:.1f} ms/image)"
        )
    for m in models:
        print(
            f"models alone, batch {m['batch']:>3}: detector {m['detector_images_per_s']:.2f} images/s, "
            f"pose {m['pose_crops_per_s']:.2f} crops/s ({m['pose_crops']} crops per call)"
        )
    info = machine(args.device, pipe)
    device_name = "cpu" if not pipe.pose_model.on_gpu else re.sub(r"\W+", "-", (info.get("gpu") or "gpu").split(",")[0])
    record = {
        "benchmark": "dwpose",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": args.source,
        "device": args.device,
        "draw_mode": args.mode,
        "load_s": round(load_s, 3),
        "png_encode_ms_per_image": png_encode_ms(pipe),
        "machine": info,
        "results": results,
        "models_alone": models,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"{dt.date.today():%Y-%m-%d}_{device_name.lower()}_dwpose.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
