"""LivePortrait networks on one device: reduced-precision error and per-network latency.

Two parts, both printed as JSON and written to ``benchmarks/results/<date>_<device>_liveportrait_networks.json``
(or ``--out``) with the machine description:

- ``--fixtures <reference dir>``: each network at its fixture config with the fixture weights, run in
  float32, under autocast float16 / bfloat16 (what ``load_networks`` does on CUDA for F, W, G) and with
  weights cast to the half dtype (for comparison); max |error| against the original outputs.
- latency: the five networks at the REAL config with seeded random weights (``random_full``), per
  network and for the F -> W -> G render chain, at several batch sizes (CUDA events after warm-up),
  in float32 (TF32 on) and autocast float16 / bfloat16.

Usage::

    python -m benchmarks.liveportrait_networks_bench --device cuda --fixtures ../shared/reference
    python -m benchmarks.liveportrait_networks_bench --device cpu --batches 1 --iters 2   # latency only, short
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from benchmarks.common import timed
from benchmarks.machine import machine_info, write_result
from pipelines.liveportrait.networks import FIXTURES, NETWORK_FILES, REAL, build_networks, load_network
from pipelines.liveportrait.networks.motion import bins_to_degrees

HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@contextlib.contextmanager
def autocast(modules: list[torch.nn.Module], dtype: torch.dtype | None) -> Iterator[None]:
    """Run ``modules`` under autocast ``dtype`` (None: float32), as ``load_networks`` sets it on CUDA."""
    for m in modules:
        m.autocast_dtype = dtype
    try:
        yield
    finally:
        for m in modules:
            m.autocast_dtype = None


def fixture_errors(reference: Path, device: torch.device) -> dict:
    from safetensors.torch import load_file

    fx = reference / "liveportrait" / "fixtures"
    table: dict = {}
    for name, (key, _, _) in NETWORK_FILES.items():
        module = load_network(name, FIXTURES, load_file(fx / f"{key}.weights.safetensors")).eval().to(device)
        io = load_file(fx / f"{key}.io.safetensors")
        x = {k.removeprefix("input."): v.to(device) for k, v in io.items() if k.startswith("input.")}
        want = {k.removeprefix("output."): v for k, v in io.items() if k.startswith("output.")}

        def run(module: torch.nn.Module, name: str = name, x=x) -> dict[str, torch.Tensor]:
            if name == "appearance":
                return {"feature_3d": module(x["source_image"])}
            if name == "motion":
                out = module(x["source_image"])
                return {**out, **{f"{a}_deg": bins_to_degrees(out[a]) for a in ("pitch", "yaw", "roll")}}
            if name == "warping":
                return module(x["feature_3d"], kp_driving=x["kp_driving"], kp_source=x["kp_source"])
            if name == "spade":
                return {"image": module(x["feature"])}
            return {k: getattr(module, k)(v) for k, v in x.items()}

        variants = [("float32", None, None)]
        variants += [(f"{mode}-{label}", mode, dt) for mode in ("autocast", "cast") for label, dt in HALF.items()]
        for label, mode, dt in variants:
            if mode == "autocast" and name == "stitching":
                continue  # plain MLPs, kept float32
            try:
                if mode == "cast":
                    got = run(copy.deepcopy(module).to(dt))
                else:
                    with autocast([module], dt):
                        got = run(module)
                errs = {k: float((got[k].float().cpu() - v).abs().max()) for k, v in want.items()}
            except RuntimeError as e:  # a half kernel missing on this device
                errs = {"error": str(e)[:120]}
            table.setdefault(name, {})[label] = errs
        print(name, json.dumps(table[name]), flush=True)
    return table


def mean_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 3) -> float:
    """Mean milliseconds per call after ``warmup`` calls; on CUDA from events around back-to-back calls."""
    if device.type != "cuda":
        return statistics.fmean(timed(fn, iters, warmup=warmup)) * 1000
    with torch.cuda.device(device):  # events record on the current device's stream: make it ``device``
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / iters


def latency(device: torch.device, batches: list[int], iters: int, warmup: int, modes: list[str]) -> dict:
    nets = build_networks(REAL, device=device, seed=0)
    f = REAL.appearance
    rows: dict = {}
    for batch in batches:
        g = torch.Generator().manual_seed(0)
        kp_s = torch.rand(batch, 21, 3, generator=g) * 1.4 - 0.7
        x = {
            "image": torch.rand(batch, 3, 256, 256, generator=g),
            "feature_3d": 0.1 * torch.randn(batch, f.reshape_channel, f.reshape_depth, 64, 64, generator=g),
            "kp_s": kp_s,
            "kp_d": kp_s + 0.05 * torch.randn(batch, 21, 3, generator=g),
            "feature": 0.1 * torch.randn(batch, REAL.spade.in_channels, 64, 64, generator=g),
            "stitch": 0.3 * torch.randn(batch, 126, generator=g),
        }
        x = {k: v.to(device) for k, v in x.items()}
        fns = {
            "appearance": lambda x=x: nets.appearance(x["image"]),
            "motion": lambda x=x: nets.motion(x["image"]),
            "warping": lambda x=x: nets.warping(x["feature_3d"], kp_driving=x["kp_d"], kp_source=x["kp_s"]),
            "spade": lambda x=x: nets.spade(x["feature"]),
            "stitching": lambda x=x: nets.stitching.stitching(x["stitch"]),
            "render_chain": lambda x=x: nets.spade(
                nets.warping(nets.appearance(x["image"]), kp_driving=x["kp_d"], kp_source=x["kp_s"])["out"]
            ),
        }
        half_modules = [nets.appearance, nets.warping, nets.spade]
        row: dict = {}
        for mode in modes:
            with autocast(half_modules, HALF.get(mode)):
                for name, fn in fns.items():
                    row.setdefault(name, {})[mode] = round(mean_ms(fn, device, iters, warmup), 2)
        rows[f"batch{batch}"] = row
        print(f"batch {batch}: {json.dumps(row)}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fixtures", type=Path, help="reference dir (../shared/reference) for the error table")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.fixtures:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        result["fixture_max_abs_error"] = fixture_errors(args.fixtures, device)
    if not args.no_latency:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        modes = ["float32", "float16", "bfloat16"] if device.type == "cuda" else ["float32"]
        batches = [int(b) for b in args.batches.split(",")]
        result["latency_ms"] = latency(device, batches, args.iters, args.warmup, modes)
        if device.type == "cuda":
            result["max_memory_allocated_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    result["machine"] = machine_info(args.device, ("torch",))
    print(f"wrote {write_result('liveportrait_networks', args.device, result, args.out)}")


if __name__ == "__main__":
    main()
