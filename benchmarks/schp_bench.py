"""SCHP human parsers (LIP 473², ATR 512²) throughput: images/s at several batch sizes.

    python benchmarks/schp_bench.py                                   # random_full, CPU, short
    python benchmarks/schp_bench.py --device cuda --dtype float16 --batches 1 8 32
    python benchmarks/schp_bench.py --source real --weights-dir /data/weights --device cuda

Per parser and batch size it times the three stages separately and end to end:
``prepare`` (CPU affine warp, per image), ``network`` (upload, normalise, forward, upsample; device
synchronised), ``postprocess`` (inverse warp per class and argmax, CPU) and the whole ``parse`` call.
Inputs are distinct photos resized to the person size CatVTON uses (768x1024 by default). Results go to
``benchmarks/results/<date>_<device>_schp.json`` with the machine description.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipelines.common.parsing.parser import HumanParser, ParserInput, labels_in_image  # noqa: E402
from pipelines.contract import WeightSource  # noqa: E402


def photos(size: tuple[int, int]) -> list[np.ndarray]:
    import skimage.data as sd

    arrays = [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket(), sd.immunohistochemistry()]
    return [np.array(Image.fromarray(a).convert("RGB").resize(size, Image.LANCZOS)) for a in arrays]


def machine(device: str) -> dict[str, Any]:
    import cv2

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    match = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "cpu": match.group(1).strip() if match else platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cv2_threads": cv2.getNumThreads(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],  # the CPU may be shared
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
    return info


def timed(fn: Callable[[], Any], device: str, iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def bench(parser: HumanParser, images: list[np.ndarray], batch: int, iters: int, warmup: int) -> dict[str, Any]:
    device = str(parser.device)
    batch_images = [images[i % len(images)] for i in range(batch)]
    prep = timed(lambda: [parser.prepare(im) for im in batch_images], device, iters)
    inputs: list[ParserInput] = [parser.prepare(im) for im in batch_images]
    for _ in range(warmup):
        parser.parse(inputs)
    net = timed(lambda: parser.upsampled_logits(inputs), device, iters)
    logits = parser.upsampled_logits(inputs).cpu().numpy()
    post = timed(lambda: [labels_in_image(lg, inp) for lg, inp in zip(logits, inputs, strict=True)], device, iters)
    whole = timed(lambda: parser(batch_images), device, iters)
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
    ap.add_argument("--source", choices=["random_full", "tiny", "real"], default="random_full")
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    ap.add_argument("--datasets", nargs="+", default=["lip", "atr"], choices=["lip", "atr"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--size", default="768x1024", help="person image WxH fed to the parsers")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmul/conv on CUDA")
    ap.add_argument("--channels-last", action="store_true", help="run the network in NHWC memory format")
    ap.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/...)")
    args = ap.parse_args()

    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    source = {
        "random_full": WeightSource.random_full(),
        "tiny": WeightSource.tiny(),
        "real": WeightSource.real(args.weights_dir),
    }[args.source]
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
            torch.cuda.empty_cache()

    info = machine(args.device)
    device_name = "cpu" if args.device == "cpu" else re.sub(r"\W+", "-", info.get("gpu", "gpu")).strip("-")
    record = {
        "benchmark": "schp",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": args.source,
        "device": args.device,
        "dtype": args.dtype,
        "tf32": args.tf32,
        "channels_last": args.channels_last,
        "person_size_wh": [width, height],
        "machine": info,
        "results": results,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"{dt.date.today().isoformat()}_{device_name}_schp.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
