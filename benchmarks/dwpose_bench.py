"""DWPose throughput: images/s of ``DWPosePipeline.run`` at several batch sizes.

    python -m benchmarks.dwpose_bench                                  # tiny models, CPU, short
    python -m benchmarks.dwpose_bench --source real --device cuda      # real ONNX files on a GPU

Each batch holds distinct photos (skimage samples, cycled), so detections and crop counts vary like real
traffic. ``run`` is timed with a context that does not encode PNGs (encoding is the worker's job and is
reported separately) unless ``--encode`` (then each PNG is encoded inside ``run``, as in the worker);
``prepare`` (decode-free resize + letterbox) is timed per image. Results go to
``benchmarks/results/<date>_<device>_dwpose.json`` with the machine description.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import NullContext, add_source_args, sample_photos, timed, weight_source
from benchmarks.machine import machine_info, write_result
from pipelines.common.image_io import encode_image
from pipelines.dwpose.pipeline import DWPosePipeline
from pipelines.dwpose.schema import DWPoseInput


class EncodingContext(NullContext):
    """Encodes each saved image as the worker's ``save_image`` does (then keeps nothing)."""

    def save_image(self, item: int, image: Any, output_format: str = "png") -> dict[str, Any]:
        encode_image(image, output_format)
        return super().save_image(item, image, output_format)


def bench(pipe: DWPosePipeline, batch: int, iters: int, warmup: int, mode: str, encode: bool = False) -> dict[str, Any]:
    images = sample_photos()
    inputs = [DWPoseInput(image_url=f"https://x/{i}.png", draw_mode=mode) for i in range(batch)]
    t0 = time.perf_counter()
    prepared = [pipe.prepare(inp, lambda url, loc, i=i: images[i % len(images)]) for i, inp in enumerate(inputs)]
    prepare_s = (time.perf_counter() - t0) / batch
    ctx = EncodingContext() if encode else NullContext()
    times = timed(lambda: pipe.run(prepared, ctx), iters, warmup=warmup)
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
        # one warm-up call (and engine build for TensorRT)
        timings[name] = statistics.median(timed(lambda model=model, x=x: model(x), iters, warmup=1))
    return {
        "batch": batch,
        "detector_images_per_s": round(batch / timings["detector"], 2),
        "detector_batched": pipe.det_model.dynamic_batch,
        "pose_crops": batch * people_per_image,
        "pose_crops_per_s": round(batch * people_per_image / timings["pose"], 2),
    }


def png_encode_ms() -> float:
    image = np.zeros((683, 512, 3), np.uint8)
    image[100:400:7, 50:450:3] = 255
    t0 = time.perf_counter()
    for _ in range(5):
        encode_image(image, "png")
    return round((time.perf_counter() - t0) / 5 * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(parser, default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--mode", default="full-pose")
    parser.add_argument("--encode", action="store_true", help="encode the PNGs inside run, as the worker does")
    parser.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/...)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    pipe = DWPosePipeline.load(weight_source(args), device=args.device)
    load_s = time.perf_counter() - t0
    results = [bench(pipe, b, args.iters, args.warmup, args.mode, args.encode) for b in args.batches]
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
    record = {
        "benchmark": "dwpose",
        "source": args.source,
        "device": args.device,
        "draw_mode": args.mode,
        "png_encode_in_run": args.encode,
        "load_s": round(load_s, 3),
        "png_encode_ms_per_image": png_encode_ms(),
        "machine": machine_info(
            args.device,
            ("onnxruntime", "numpy", "torch", "opencv"),
            providers=pipe.pose_model.session.get_providers(),
        ),
        "results": results,
        "models_alone": models,
    }
    # onnxruntime may fall back to the CPU on a GPU machine: name the file after where it ran
    out = write_result("dwpose", args.device if pipe.pose_model.on_gpu else "cpu", record, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
