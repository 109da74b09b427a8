"""PuLID throughput: images/s and peak memory at 768x1024, 4 steps, 4 reference faces, side by side with the
original way of running the same networks.

    python -m benchmarks.pulid_bench --device cuda --dtype float16                 # GPU: both ways, end to end
    flock /tmp/bigmem.lock python -m benchmarks.pulid_bench --components-only      # CPU, ~11 GB float32

(``benchmarks/pulid_streamed.py`` times the same full-size components on a CPU in under 3 GB.)

- ours: requests batched through the stepwise pipeline (their rows share UNet calls), ID tokens of the
  4 references cached (the same faces as the previous request);
- original way: one request (one image) per call, the 4 references embedded again each time (EVA, IDEncoder,
  parsing, face models), same dtype, eager: what ``app.py`` does per image.

``--components-only`` (for CPU, where full-size runs take minutes) times one UNet step at each batch size,
one float32 VAE decode, one reference's ID embedding and the prompt encoding, and extrapolates seconds
per image = steps x step(b) / b + decode (+ 4 x ID embedding + prompts for the original way). The face
models are the tiny ONNX stand-ins unless ``--source real``.
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

from benchmarks.common import NullContext, add_source_args, sample_photos, sync, tf32_state, timed, weight_source
from benchmarks.machine import machine_info, write_result
from pipelines.contract import Prepared
from pipelines.pulid.pipeline import PuLIDPipeline, PuLIDState
from pipelines.pulid.schema import PuLIDInput
from pipelines.pulid.sdxl import encode_prompt

REFERENCE_PHOTOS = ("astronaut", "camera", "coffee", "rocket")  # the tiny SCRFD stand-in sees a "face" in each


class QuietContext(NullContext):
    def progress(self, step: int, total: int, item: int | None = None) -> None: ...


def requests(n: int, width: int, height: int, steps: int) -> list[PuLIDInput]:
    refs = [{"image_url": name} for name in REFERENCE_PHOTOS]
    return [
        PuLIDInput(
            reference_images=refs,
            prompt=f"portrait {i}, impressionist painting, loose brushwork",
            image_size={"width": width, "height": height},
            num_inference_steps=steps,
            seed=i,
        )
        for i in range(n)
    ]


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB -> GiB, whole process


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def end_to_end(pipe: PuLIDPipeline, prepared: list[Prepared], args: argparse.Namespace) -> dict[str, Any]:
    ctx = QuietContext()
    out: dict[str, Any] = {"ours": [], "original_way": None}
    pipe.run(prepared[:1], ctx)  # warm-up; fills the ID-token cache with the 4 references
    for bs in args.batch_sizes:
        batch = prepared[:bs]
        reset_peak(args.device)
        times = timed(lambda batch=batch: pipe.run(batch, ctx), args.repeats, device=args.device)
        median = statistics.median(times)
        row = {"batch_size": bs, "seconds_per_batch": round(median, 4), "images_per_s": round(bs / median, 3)}
        row["seconds_per_image"] = round(median / bs, 4)
        row["peak_memory_gib"] = peak_memory_gib(args.device)
        out["ours"].append(row)
        print(json.dumps({"ours": row}), flush=True)

    def original_way() -> None:  # one image per call, references embedded again each time
        for item in prepared[: max(args.batch_sizes)]:
            pipe.cache._entries.clear()
            fresh = pipe.prepare(item.input, photo_loader())
            pipe.run([fresh], ctx)

    n = max(args.batch_sizes)
    reset_peak(args.device)
    times = timed(original_way, args.repeats, device=args.device)
    median = statistics.median(times)
    out["original_way"] = {
        "images": n,
        "seconds_per_image": round(median / n, 4),
        "images_per_s": round(n / median, 3),
        "peak_memory_gib": peak_memory_gib(args.device),
    }
    print(json.dumps({"original_way": out["original_way"]}), flush=True)
    best = max(r["images_per_s"] for r in out["ours"])
    out["speedup_vs_original_way"] = round(best / out["original_way"]["images_per_s"], 2)
    return out


@torch.inference_mode()
def components(pipe: PuLIDPipeline, prepared: list[Prepared], args: argparse.Namespace) -> dict[str, Any]:
    ctx = QuietContext()
    res: dict[str, Any] = {"unet_step_s": {}}
    for bs in args.batch_sizes:
        state = pipe.begin(prepared[:bs], ctx)
        reset_peak(args.device)
        step = timed(lambda state=state: pipe.step(state, ctx), 1, device=args.device)[0]  # one step, not repeated
        res["unet_step_s"][bs] = round(step, 3)
        res.setdefault("peak_memory_gib_after_step", {})[bs] = peak_memory_gib(args.device)
        print(json.dumps({"batch": bs, "unet_step_s": step}), flush=True)
        last_state: PuLIDState = state
    row = last_state.rows[0]
    res["vae_decode_s"] = round(timed(lambda: pipe.decode(row.latents), 1, device=args.device)[0], 3)
    digest, face = next(iter(prepared[0].extra["references"]))
    pipe.cache._entries.clear()
    res["id_embedding_s_per_reference"] = round(
        timed(lambda: pipe._reference_tokens(digest, face), 1, device=args.device)[0], 3
    )
    res["prompt_encoding_s"] = round(
        timed(lambda: encode_prompt(pipe.nets.sdxl, prepared[0].input.prompt), 1, device=args.device)[0] * 2, 3
    )
    steps = args.steps
    per_image_ours = {
        bs: round(steps * res["unet_step_s"][bs] / bs + res["vae_decode_s"], 2) for bs in args.batch_sizes
    }
    original = steps * res["unet_step_s"][1] + res["vae_decode_s"]
    original += 4 * res["id_embedding_s_per_reference"] + res["prompt_encoding_s"]
    res["extrapolated_seconds_per_image"] = {"ours": per_image_ours, "original_way": round(original, 2)}
    res["peak_memory_gib"] = peak_memory_gib(args.device)
    print(json.dumps(res), flush=True)
    return res


def photo_loader():
    photos = dict(zip(REFERENCE_PHOTOS, sample_photos(REFERENCE_PHOTOS), strict=True))
    return lambda url, loc: photos[url]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    add_source_args(parser, default="random_full")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size (end to end)")
    parser.add_argument("--components-only", action="store_true", help="time single components (CPU)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    t0 = time.perf_counter()
    pipe = PuLIDPipeline.load(weight_source(args), device=args.device, dtype=args.dtype)
    sync(args.device)
    load_s = time.perf_counter() - t0
    print(f"loaded in {load_s:.1f}s, resident {pipe.resident_bytes() / 2**30:.2f} GiB", flush=True)
    loader = photo_loader()
    t = time.perf_counter()
    prepared = [
        pipe.prepare(inp, loader) for inp in requests(max(args.batch_sizes), args.width, args.height, args.steps)
    ]
    prepare_s = (time.perf_counter() - t) / len(prepared)
    for i, item in enumerate(prepared):
        item.key = i

    report: dict[str, Any] = {
        "benchmark": "pulid",
        "endpoint": "fal-ai/pulid",
        "source": args.source,
        "device": args.device,
        "dtype": f"UNet and text encoders {args.dtype}; VAE, EVA, IDEncoder, ID projections float32",
        "tf32": tf32_state(args.device),
        "size": f"{args.width}x{args.height}",
        "steps": args.steps,
        "references": len(REFERENCE_PHOTOS),
        "guidance_scale": 1.2,
        "load_s": round(load_s, 1),
        "resident_gib": round(pipe.resident_bytes() / 2**30, 2),
        "prepare_s_per_request": round(prepare_s, 4),
    }
    if args.components_only:
        report["kind"] = "components: one call each, timed once; per-image figures are extrapolated"
        report["components"] = components(pipe, prepared, args)
    else:
        report["kind"] = "end to end (run: prompts, ID tokens, sampling, decode; no PNG encoding)"
        report["end_to_end"] = end_to_end(pipe, prepared, args)
    report["machine"] = machine_info(args.device, ("torch", "diffusers", "transformers", "timm", "onnxruntime"))
    out = write_result("pulid", args.device, report, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
