"""DensePose R-50-FPN throughput: images/s for the consumers' calls, at several batch sizes.

    python -m benchmarks.densepose_bench                                  # random_full, CPU, short
    python -m benchmarks.densepose_bench --device cuda --batches 1 4 8 16 --iters 10
    python -m benchmarks.densepose_bench --source real --weights-dir /data/weights --device cuda

Per batch size it times ``DensePose.predict`` as the consumers call it (``max_instances=1``) on
768×1024 person photos: the detector, the DensePose branch for the top instance, and the products
(``leffa_iuv``: threshold 0.5, RGB fed as BGR; ``catvton_part_maps``: threshold 0.8). With random weights
the number of detections is arbitrary (it is reported); the DensePose branch always runs on one box per
image thanks to ``max_instances``, but the box head runs on all 1000 proposals as in the original.
Results go to ``benchmarks/results/<date>_<device>_densepose.json`` with the machine description.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import (
    SAMPLE_PHOTOS,
    add_source_args,
    add_tf32_arg,
    apply_tf32,
    sample_photos,
    tf32_state,
    timed,
    weight_source,
)
from benchmarks.machine import machine_info, write_result
from pipelines.common.densepose.predictor import DensePose


def photos(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``n`` person-sized photos, cycling through four distinct ones."""
    distinct = [np.array(p) for p in sample_photos(SAMPLE_PHOTOS[:4], size)]
    return [distinct[i % len(distinct)] for i in range(n)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    add_source_args(parser, default="random_full")
    add_tf32_arg(parser)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    apply_tf32(args)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    dp = DensePose.load(weight_source(args), args.device, args.dtype)
    load_s = time.perf_counter() - t0

    rows = []
    for batch in args.batches:
        images = photos(batch, (args.width, args.height))
        pil = [Image.fromarray(im) for im in images]
        calls = {
            "predict_top1": lambda images=images: dp.predict(images, 0.5, max_instances=1),
            "leffa_iuv": lambda images=images: dp.leffa_iuv(images),
            "catvton_part_maps": lambda pil=pil: dp.catvton_part_maps(pil),
        }
        detections = [len(r) for r in dp.predict(images, 0.5)]
        for name, fn in calls.items():
            times = timed(fn, args.iters, warmup=args.warmup, device=args.device)
            median = statistics.median(times)
            row = {
                "call": name,
                "batch": batch,
                "median_s": round(median, 4),
                "min_s": round(min(times), 4),
                "images_per_s": round(batch / median, 3),
                "detections_at_0.5": detections,
            }
            rows.append(row)
            print(row, flush=True)

    payload = {
        "benchmark": "densepose",
        "source": args.source,
        "dtype": args.dtype,
        "tf32": tf32_state(args.device),
        "image_wh": [args.width, args.height],
        "network_input_hw": "1067x800 (padded 1088x800) for 1024x768 photos at the real config",
        "iters": args.iters,
        "warmup": args.warmup,
        "load_s": round(load_s, 2),
        "threads": torch.get_num_threads(),
        "loadavg_1m_5m_15m_at_end": [round(x, 2) for x in os.getloadavg()],  # shared CI machines are noisy
        "machine": machine_info(args.device, ("torch", "torchvision")),
        "results": rows,
    }
    path = write_result("densepose", args.device, payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
