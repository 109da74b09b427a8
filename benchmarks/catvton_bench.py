"""CatVTON throughput: images/s and peak memory at 768x1024, 30 steps, batch 1/2/4 (``fal-ai/cat-vton``).

    python -m benchmarks.catvton_bench                                          # CPU: one step timed, extrapolated
    python -m benchmarks.catvton_bench --device cuda --dtype bfloat16           # GPU: whole runs + the baseline
    python -m benchmarks.catvton_bench --device cuda --dtype bfloat16 --compile # + torch.compile'd UNet

``random_full`` = the real network sizes (SD1.5-inpainting UNet, sd-vae-ft-mse, DensePose, SCHP x2) with seeded
random weights. Two measures:

- ``full`` (default on CUDA): ``CatVTONPipeline.run`` on B requests after a warm-up batch: AutoMasker, VAE
  encode, N DDIM steps with CFG, decode (no PNG encoding). Also the **original way**: the same networks in the
  same dtype, eager, one request at a time (batch 1, CFG doubling only), as CatVTON's app runs them; both are
  measured in this one process, side by side.
- ``step`` (default on CPU, where a whole run takes hours): ``begin`` (masker + encode) and ``finish`` (decode)
  are timed once at batch 1, one ``step`` at every batch size; seconds per batch are **extrapolated** as
  ``B * begin_1 + N * step_B + B * finish_1``. The JSON says ``"extrapolated": true``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import NullContext, add_source_args, on_device, sample_photos, sync, tf32_state, weight_source
from benchmarks.machine import machine_info, write_result
from pipelines.catvton.denoise import Row, draw
from pipelines.catvton.pipeline import CatVTONPipeline, TryOnBatch
from pipelines.catvton.schema import CatVTONInput
from pipelines.contract import Prepared

CLOTH_TYPES = ("upper", "lower", "overall", "inner")


class Context(NullContext):
    def progress(self, step: int, total: int, item: int | None = None) -> None: ...


def prepared_batch(pipe: CatVTONPipeline, n: int, width: int, height: int, steps: int) -> list[Prepared]:
    person, garment = sample_photos(["astronaut", "coffee"])
    items = []
    for i in range(n):
        inp = CatVTONInput(
            human_image_url="person",
            garment_image_url="garment",
            cloth_type=CLOTH_TYPES[i % len(CLOTH_TYPES)],
            image_size={"width": width, "height": height},
            num_inference_steps=steps,
            guidance_scale=2.5,
        )
        items.append(pipe.prepare(inp, lambda url, loc: person if url == "person" else garment))
    return items


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # process peak RSS (kB -> GiB)


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def clock(fn: Any, device: str) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def measure_full(pipe: CatVTONPipeline, args: argparse.Namespace) -> dict[str, Any]:
    ctx = Context()
    rows, baseline = [], []
    for bs in args.batch_sizes:
        pipe.run(prepared_batch(pipe, bs, args.width, args.height, args.steps), ctx)  # warm-up
        times = []
        reset_peak(args.device)
        for _ in range(args.repeats):
            batch = prepared_batch(pipe, bs, args.width, args.height, args.steps)
            times.append(clock(lambda batch=batch: pipe.run(batch, ctx), args.device)[1])
        median = statistics.median(times)
        row = {"batch_size": bs, "seconds_per_batch": round(median, 3), "images_per_s": round(bs / median, 3)}
        row |= {"seconds_per_image": round(median / bs, 3), "peak_memory_gib": peak_memory_gib(args.device)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not args.no_baseline:  # the original way: batch 1, one request after the other, same process
        reset_peak(args.device)
        n = max(args.batch_sizes)
        singles = [prepared_batch(pipe, 1, args.width, args.height, args.steps) for _ in range(n)]
        _, seconds = clock(lambda: [pipe.run(single, ctx) for single in singles], args.device)
        baseline.append(
            {
                "what": "original way: eager, batch 1 (CFG doubling only), requests one after the other",
                "images": n,
                "seconds_per_image": round(seconds / n, 3),
                "images_per_s": round(n / seconds, 3),
                "peak_memory_gib": peak_memory_gib(args.device),
            }
        )
        print(json.dumps(baseline[-1]), flush=True)
    return {"results": rows, "baseline": baseline}


def synthetic_batch(pipe: CatVTONPipeline, bs: int, args: argparse.Namespace) -> TryOnBatch:
    """``bs`` rows of the benchmark's shape with CFG on: a step costs the same whatever the latents hold."""
    device, shape = pipe.networks.device, (1, 4, 2 * (args.height // 8), args.width // 8)
    noise = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, 1, *shape[2:], device=device)
    rows = [
        Row(k, draw(shape, noise, device), mask, draw(shape, noise, device), 2.5, args.steps, torch.Generator())
        for k in range(bs)
    ]
    return TryOnBatch(rows=rows)


def measure_step(pipe: CatVTONPipeline, args: argparse.Namespace, write: Any) -> dict[str, Any]:
    """One step per batch size (the first batch size first), and begin/finish once at batch 1; the report is
    rewritten after each measurement, so a slow machine leaves the finished ones."""
    ctx = Context()
    measured: dict[str, Any] = {"begin_s_batch1": None, "finish_s_batch1": None, "results": []}

    def extrapolate() -> None:
        begin_s, finish_s = measured["begin_s_batch1"], measured["finish_s_batch1"]
        for row in measured["results"]:
            if begin_s is not None:
                bs = row["batch_size"]
                seconds = bs * begin_s + args.steps * row["step_s"] + bs * finish_s
                row |= {"seconds_per_batch": round(seconds, 1), "seconds_per_image": round(seconds / bs, 1)}
                row |= {"images_per_s": round(bs / seconds, 5), "extrapolated": True}
        write(measured)

    for i, bs in enumerate(args.batch_sizes):
        state = synthetic_batch(pipe, bs, args)
        reset_peak(args.device)
        _, step_s = clock(lambda state=state: pipe.step(state, ctx), args.device)
        row = {"batch_size": bs, "step_s": round(step_s, 2), "peak_memory_gib": peak_memory_gib(args.device)}
        measured["results"].append(row)
        print(json.dumps(row), flush=True)
        extrapolate()
        if i == 0:
            batch = prepared_batch(pipe, 1, args.width, args.height, args.steps)
            state, begin_s = clock(lambda batch=batch: pipe.begin(batch, ctx), args.device)
            _, finish_s = clock(lambda state=state: pipe.finish(state, [0], ctx), args.device)  # same cost as at t=0
            measured |= {"begin_s_batch1": round(begin_s, 2), "finish_s_batch1": round(finish_s, 2)}
            print(json.dumps({k: measured[k] for k in ("begin_s_batch1", "finish_s_batch1")}), flush=True)
            extrapolate()
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", default=None, choices=["float32", "float16", "bfloat16"], help="default: bf16 on CUDA"
    )
    add_source_args(parser, default="random_full")
    parser.add_argument("--measure", choices=["full", "step"], default=None, help="default: full on CUDA, else step")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2, help="timed batches per batch size (full)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the original-way baseline (full)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.measure = args.measure or ("full" if cuda else "step")

    with on_device(args.device):
        t0 = time.perf_counter()
        pipe = CatVTONPipeline.load(weight_source(args), device=args.device, dtype=args.dtype)
        load_s = time.perf_counter() - t0
        if args.compile:
            pipe.networks.unet = torch.compile(pipe.networks.unet, dynamic=True)

        def write(measured: dict[str, Any]) -> Path:
            report = {
                "benchmark": "catvton",
                "endpoint": "fal-ai/cat-vton",
                "source": args.source,
                "device": args.device,
                "dtype": args.dtype,
                "compile": args.compile,
                "tf32": tf32_state(args.device),
                "measure": args.measure,
                "extrapolated": args.measure == "step",
                "image": f"{args.width}x{args.height}, {args.steps} DDIM steps, guidance 2.5 (CFG), "
                "skimage astronaut (person) / coffee (garment)",
                "load_s": round(load_s, 1),
                "resident_gib": round(pipe.resident_bytes() / 2**30, 2),
                "note": "run() = AutoMasker (DensePose + SCHP LIP/ATR, float32) + VAE encode + steps + decode; no PNG "
                "encoding. step measure: one step timed per batch size, seconds per batch extrapolated as "
                "B*begin_1 + N*step_B + B*finish_1; peak memory on CPU is the process's peak RSS.",
                **measured,
                "machine": machine_info(args.device, ("torch", "diffusers")),
            }
            return write_result("catvton", args.device, report, args.out)

        out = write(measure_full(pipe, args) if args.measure == "full" else measure_step(pipe, args, write))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
