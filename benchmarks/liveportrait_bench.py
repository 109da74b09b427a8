"""LivePortrait throughput: images/s of ``LivePortraitPipeline.run`` at several batch sizes.

    python -m benchmarks.liveportrait_bench                                   # random_full, CPU, short
    python -m benchmarks.liveportrait_bench --device cuda --batch-sizes 1 4 16 --repeats 5
    python -m benchmarks.liveportrait_bench --device cuda --dtype float16     # upstream's default precision

``random_full`` = the real network sizes with seeded random weights; the face models are the tiny
stand-ins (``--source real`` uses the real files, which also makes ``prepare`` representative).
``run`` (F, M, editing maths, W, G, paste-back; no image encoding unless ``--encode``) is timed after one
warm-up batch; ``prepare`` (face detection, crop, mask) is timed per image. Each request has different knobs.
Results go to ``benchmarks/results/<date>_<device>_liveportrait.json`` with the machine description.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    NullContext,
    add_source_args,
    add_tf32_arg,
    apply_tf32,
    sample_photos,
    sync,
    tf32_state,
    timed,
    weight_source,
)
from benchmarks.machine import machine_info, write_result
from pipelines.common.image_io import encode_image
from pipelines.liveportrait.pipeline import LivePortraitPipeline
from pipelines.liveportrait.schema import LivePortraitImageInput


class EncodingContext(NullContext):
    """Encodes each saved image as the worker's ``save_image`` does (then keeps nothing)."""

    def save_image(self, item: int, image: Any, output_format: str = "png") -> dict[str, Any]:
        encode_image(image, output_format)
        return super().save_image(item, image, output_format)


def requests(n: int) -> list[LivePortraitImageInput]:
    knobs = [dict(smile=0.8), dict(blink=-8), dict(aaa=40, rotate_yaw=8), dict(wink=6, pupil_x=10)]
    return [LivePortraitImageInput(image_url="x", **knobs[i % len(knobs)]) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    add_source_args(parser, default="random_full")
    add_tf32_arg(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=1, help="timed batches per batch size")
    parser.add_argument("--encode", action="store_true", help="encode the JPEGs inside run, as the worker does")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    apply_tf32(args)
    t0 = time.perf_counter()
    pipe = LivePortraitPipeline.load(weight_source(args), device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t0

    (photo,) = sample_photos(["astronaut"])
    prep_times, prepared = [], []
    for inp in requests(max(args.batch_sizes)):
        t = time.perf_counter()
        prepared.append(pipe.prepare(inp, lambda url, loc: photo))
        prep_times.append(time.perf_counter() - t)

    ctx = EncodingContext() if args.encode else NullContext()
    results = []
    for bs in args.batch_sizes:
        batch = prepared[:bs]
        pipe.run(batch, ctx)  # warm-up (cudnn autotune, allocator)
        sync(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(args.device)
        times = timed(lambda batch=batch: pipe.run(batch, ctx), args.repeats, device=args.device)
        median = statistics.median(times)
        row = {
            "batch_size": bs,
            "seconds_per_batch": round(median, 4),
            "images_per_s": round(bs / median, 3),
            "runs": len(times),
        }
        if args.device.startswith("cuda"):
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(args.device) / 2**30, 2)
        results.append(row)
        print(json.dumps(row), flush=True)

    report = {
        "benchmark": "liveportrait",
        "endpoint": "fal-ai/live-portrait/image",
        "source": args.source,
        "device": args.device,
        "dtype": args.dtype,
        "tf32": tf32_state(args.device),
        "load_s": round(load_s, 2),
        "encode_in_run": args.encode,
        "prepare_s_per_image": round(statistics.median(prep_times), 4),
        "image": "skimage astronaut 512x512, paste-back on, output 512x512",
        "note": "run() = F, M, edit maths, stitching, W, G, paste-back (+ JPEG encoding if encode_in_run). "
        "Face models are the tiny stand-ins unless source is real.",
        "results": results,
        "machine": machine_info(args.device, ("torch", "onnxruntime", "opencv")),
    }
    out = write_result("liveportrait", args.device, report, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
