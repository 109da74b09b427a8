"""SCHP human parsers (LIP 473², ATR 512²) throughput: images/s at several batch sizes.

    python -m benchmarks.schp_bench                                   # random_full, CPU, short
    python -m benchmarks.schp_bench --device cuda --dtype float16 --batches 1 8 32
    python -m benchmarks.schp_bench --source real --weights-dir /data/weights --device cuda

Per parser and batch size it times the three stages separately and end to end:
``prepare`` (CPU affine warp, per image), ``network`` (upload, normalise, forward, upsample; device
synchronised), ``postprocess`` (inverse warp per class and argmax, CPU) and the whole ``parse`` call.
Inputs are distinct photos resized to the person size CatVTON uses (768x1024 by default). Results go to
``benchmarks/results/<date>_<device>_schp.json`` with the machine description.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import (
    add_source_args,
    add_tf32_arg,
    apply_tf32,
    on_device,
    sample_photos,
    tf32_state,
    timed,
    weight_source,
)
from benchmarks.machine import machine_info, write_result
from pipelines.common.parsing.parser import HumanParser, ParserInput, labels_in_image


def photos(size: tuple[int, int]) -> list[np.ndarray]:
    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
    return [np.array(p) for p in sample_photos(names, size, Image.Resampling.LANCZOS)]


def bench(parser: HumanParser, images: list[np.ndarray], batch: int, iters: int, warmup: int) -> dict[str, Any]:
    device = str(parser.device)
    batch_images = [images[i % len(images)] for i in range(batch)]
    prep = timed(lambda: [parser.prepare(im) for im in batch_images], iters, device=device)
    inputs: list[ParserInput] = [parser.prepare(im) for im in batch_images]
    for _ in range(warmup):
        parser.parse(inputs)
    net = timed(lambda: parser.upsampled_logits(inputs), iters, device=device)
    logits = parser.upsampled_logits(inputs).cpu().numpy()
    post = timed(
        lambda: [labels_in_image(lg, inp) for lg, inp in zip(logits, inputs, strict=True)], iters, device=device
    )
    whole = timed(lambda: parser(batch_images), iters, device=device)
    med = statistics.median
    return {
        "batch": batch,
        "iters": iters,
        "images_per_s": round(batch / med(whole), 3),
        "network_images_per_s": round(batch / med(net), 3),
        "prepare_ms_per_image": round(med(prep) / batch * 1000, 2),
        "network_ms_per_batch": round(med(net) * 1000, 2),
        "postprocess_ms_per_image": round(med(post) / batch * 1000, 2),
        "end_to_end_ms_per_batch": round(med(whole) * 1000, 2),
        "end_to_end_ms_min": round(min(whole) * 1000, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(ap, default="random_full")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    ap.add_argument("--datasets", nargs="+", default=["lip", "atr"], choices=["lip", "atr"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--size", default="768x1024", help="person image WxH fed to the parsers")
    add_tf32_arg(ap)
    ap.add_argument("--channels-last", action="store_true", help="run the network in NHWC memory format")
    ap.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/...)")
    args = ap.parse_args()

    apply_tf32(args)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    source = weight_source(args)
    width, height = (int(v) for v in args.size.split("x"))
    images = photos((width, height))

    results = []
    for dataset in args.datasets:
        t0 = time.perf_counter()
        parser = HumanParser.load(dataset, source, args.device, args.dtype, channels_last=args.channels_last)
        load_s = time.perf_counter() - t0
        for batch in args.batches:
            r = {"parser": dataset, "input_size": list(parser.config.input_size), "load_s": round(load_s, 2)}
            r |= bench(parser, images, batch, args.iters, args.warmup)
            results.append(r)
            print(
                f"{dataset} batch {batch:>3}: {r['images_per_s']:>8.2f} images/s end to end "
                f"(network {r['network_images_per_s']:.2f} images/s, prepare {r['prepare_ms_per_image']:.1f} ms, "
                f"postprocess {r['postprocess_ms_per_image']:.1f} ms per image)"
            )
        del parser
        if args.device.startswith("cuda"):
            with on_device(args.device):
                torch.cuda.empty_cache()

    record = {
        "benchmark": "schp",
        "source": args.source,
        "device": args.device,
        "dtype": args.dtype,
        "tf32": tf32_state(args.device),
        "channels_last": args.channels_last,
        "person_size_wh": [width, height],
        "machine": machine_info(args.device, ("torch", "opencv", "numpy")),
        "results": results,
    }
    out = write_result("schp", args.device, record, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
