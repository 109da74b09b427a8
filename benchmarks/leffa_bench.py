"""Leffa pose transfer throughput at 768x1024: images/s and peak memory, batch sizes x ref_acceleration off/on,
next to the same networks run as the original runs them.

    # CPU (here): bfloat16, one denoising step timed per configuration and extrapolated to --steps
    flock /tmp/bigmem.lock python -m benchmarks.leffa_bench --dtype bfloat16 --one-step --batch-sizes 1
    # GPU: whole requests (50 steps), ours and the original way side by side
    python -m benchmarks.leffa_bench --device cuda --dtype float16 --batch-sizes 1 2 --baseline

``random_full`` = the real network sizes (two 2.57 B-parameter SDXL UNets, SDXL VAE, DensePose R50-FPN, CLIP
ViT-L safety checker) with seeded random weights. Timed: ``run`` = begin (DensePose, VAE encodes), the steps,
finish (VAE decode, safety checker; no image encoding), after one warm-up request.

``--baseline``: "the original way" = Leffa's app: float16 eager, one request at a time, its attention (queries
over own + reference tokens, the first N outputs kept) and the whole reference UNet (up to ``conv_out``) run
every step (its default, no ref_acceleration).

``--one-step``: ``begin``, one ``step`` and ``finish`` are timed separately and a request is reported as
``begin + steps x step + finish`` (labelled ``extrapolated``): a whole 50-step request takes hours on 2 CPU cores.
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
from diffusers.models.attention_processor import Attention

from benchmarks.common import NullContext, add_source_args, sample_photos, sync, weight_source
from benchmarks.machine import machine_info, write_result
from pipelines.leffa import attention
from pipelines.leffa.pipeline import LeffaPoseTransferPipeline
from pipelines.leffa.schema import LeffaPoseTransferInput


class StepContext(NullContext):
    def progress(self, step: int, total: int, item: int | None = None) -> None: ...


class OriginalConcatProcessor(attention.ReferenceAttnProcessor):
    """Leffa's generative attn1 as written: attention over the concatenation for all 2N tokens, first N kept."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        n = hidden_states.shape[1]
        both = torch.cat([hidden_states, self.features[self.block]], dim=1)
        return self.attention(attn, both)[:, :n]


def original_way(pipe: LeffaPoseTransferPipeline, on: bool) -> None:
    """Swap in (or out) the original's attention and full reference-UNet forward."""
    nets = pipe.networks
    for proc in nets.reference_unet.attn_processors.values():
        if isinstance(proc, attention.RecordingProcessor):
            proc.last = (not on) and proc.block == nets.blocks[-1]
    processors = {}
    for name, proc in nets.unet.attn_processors.items():
        if isinstance(proc, attention.ReferenceAttnProcessor):
            cls = OriginalConcatProcessor if on else attention.ReferenceAttnProcessor
            proc = cls(proc.block, proc.features)
        processors[name] = proc
    nets.unet.set_attn_processor(processors)


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB on Linux)


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def seconds(fn: Any, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def whole_requests(pipe, prepared, bs: int, repeats: int, device: str) -> dict[str, Any]:
    """Requests run as the worker runs them (``run`` over the stepwise protocol)."""
    ctx = StepContext()
    batch = prepared[:bs]
    pipe.run(batch, ctx)  # warm-up
    reset_peak(device)
    times = [seconds(lambda: pipe.run(batch, ctx), device) for _ in range(repeats)]
    median = statistics.median(times)
    return {"seconds_per_batch": round(median, 3), "seconds_per_image": round(median / bs, 3),
            "images_per_s": round(bs / median, 4), "runs": len(times), "measured": "whole requests"}  # fmt: skip


def one_step(pipe, prepared, bs: int, steps: int, device: str) -> list[dict[str, Any]]:
    """begin, one step, one reference-UNet pass and finish timed once each (ref_acceleration off); a request is
    extrapolated as begin + steps x step + finish, and with ref_acceleration as
    begin + reference + steps x (step - reference) + finish."""
    ctx = StepContext()
    batch = prepared[:bs]
    for i, item in enumerate(batch):
        item.key = i
    pipe.ref_acceleration = False
    reset_peak(device)
    state = None

    def begin() -> None:
        nonlocal state
        state = pipe.begin(batch, ctx)

    begin_s = seconds(begin, device)
    rows = state.rows
    t = [row.timesteps[0] for row in rows]
    reference_s = seconds(lambda: pipe._reference_features(rows, t), device)
    step_s = seconds(lambda: pipe.step(state, ctx), device)
    finish_s = seconds(lambda: pipe.finish(state, pipe.keys(state), ctx), device)
    label = f"extrapolated: one step (x{steps}), one reference pass, begin and finish timed once, no warm-up"
    out = []
    for acc, total in [(False, begin_s + steps * step_s + finish_s),
                       (True, begin_s + reference_s + steps * (step_s - reference_s) + finish_s)]:  # fmt: skip
        out.append({"ref_acceleration": acc, "begin_s": round(begin_s, 2), "reference_pass_s": round(reference_s, 2),
                    "step_s": round(step_s, 2), "finish_s": round(finish_s, 2),
                    "seconds_per_batch": round(total, 1), "seconds_per_image": round(total / bs, 1),
                    "images_per_s": round(bs / total, 6), "measured": label})  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    add_source_args(parser, default="random_full")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--acceleration", choices=["off", "on", "both"], default="both")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2, help="timed batches per configuration")
    parser.add_argument("--one-step", action="store_true", help="time one step and extrapolate (CPU)")
    parser.add_argument(
        "--baseline", action="store_true", help="also the original way: eager, batch 1, original attention"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    t0 = time.perf_counter()
    pipe = LeffaPoseTransferPipeline.load(weight_source(args), device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    pose, person = sample_photos(["astronaut", "astronaut"])
    pose = pose.crop((96, 0, 416, 512))
    inp = LeffaPoseTransferInput(pose_image_url="pose", person_image_url="person", num_inference_steps=args.steps)
    images = {"pose": pose, "person": person}
    prepared = [pipe.prepare(inp, lambda url, loc: images[url]) for _ in range(max(args.batch_sizes))]

    accelerations = {"off": [False], "on": [True], "both": [False, True]}[args.acceleration]
    results = []
    if args.one_step:  # both ref_acceleration settings from one measured step
        configs = [("ours", bs, None) for bs in args.batch_sizes]
    else:
        configs = [("ours", bs, acc) for acc in accelerations for bs in args.batch_sizes]
    if args.baseline:
        configs.insert(0, ("original way", 1, False))
    for way, bs, acc in configs:
        original_way(pipe, way == "original way")
        if args.one_step:
            measured = one_step(pipe, prepared, bs, args.steps, args.device)
        else:
            pipe.ref_acceleration = bool(acc)
            measured = [{"ref_acceleration": acc, **whole_requests(pipe, prepared, bs, args.repeats, args.device)}]
        peak = round(peak_memory_gib(args.device), 2)
        for m in measured:
            row = {"way": way, "batch_size": bs, **m, "peak_memory_gib": peak}
            if way == "original way" and m["ref_acceleration"]:
                continue  # the original way is its default: no ref_acceleration
            results.append(row)
            print(json.dumps(row), flush=True)
    original_way(pipe, False)

    report = {
        "benchmark": "leffa",
        "endpoint": "fal-ai/leffa/pose-transfer",
        "source": args.source,
        "device": args.device,
        "dtype": args.dtype,
        "steps": args.steps,
        "size": "768x1024 (both inputs letterboxed onto the canvas), CFG (2 UNet rows per request)",
        "load_s": round(load_s, 1),
        "resident_gib": round(pipe.resident_bytes() / 2**30, 2),
        "row_gib_estimate": round(pipe.row_bytes(inp) / 2**30, 2),
        "peak_memory": "torch.cuda.max_memory_allocated per configuration on CUDA; process peak RSS on CPU",
        "note": __doc__.split("\n\n")[2].replace("\n", " "),
        "results": results,
        "machine": machine_info(args.device, ("torch", "diffusers", "transformers")),
    }
    out = write_result("leffa", args.device, report, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
