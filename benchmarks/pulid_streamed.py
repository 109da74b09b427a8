"""PuLID's full-size networks timed on a CPU without holding them in memory at once (for machines where
the 10 GB of weights do not fit next to other work): the product's modules, built on the ``meta`` device,
each materialised with random values just before it runs and dropped after.

    python -m benchmarks.pulid_streamed --dtype bfloat16 --batch-sizes 1 4

Times (seconds, one call each, not repeated): one UNet step (CFG: 2 UNet rows per image, 4 references,
fidelity) at each batch size, summing the time spent inside each transformer / ResNet / resampling block
(materialisation excluded), one float32 VAE decode, one reference's ID embedding (BiSeNet at 512, EVA02-L
at 336, IDEncoder) and the two text encoders. Per-image figures are extrapolated:
steps x step(b) / b + decode (timed at 384x512, x4), plus 4 x ID embedding + prompts for the original way
(one image per call, references embedded each time). Peak memory is the process's max RSS.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from benchmarks.machine import machine_info, write_result
from pipelines.common.tensors import torch_dtype
from pipelines.pulid import eva as eva_mod
from pipelines.pulid import sdxl
from pipelines.pulid.adapter import build_adapter
from pipelines.pulid.face_nets import BiSeNet
from pipelines.pulid.faces import parse_labels
from pipelines.pulid.id_attention import IDConditioning, row_sequences
from pipelines.pulid.id_embedding import cond_tokens, eva_from_parsed
from pipelines.pulid.idencoder import IDEncoder
from pipelines.pulid.sdxl import make_scheduler

STREAMED = (BasicTransformerBlock, ResnetBlock2D, Downsample2D, Upsample2D)


def materialize_(module: nn.Module, recurse: bool = True) -> None:
    """Real storage with small random values (timing only: the values must just be finite)."""
    module.to_empty(device="cpu", recurse=recurse)
    with torch.no_grad():
        for p in module.parameters(recurse=recurse):
            p.normal_(0, 0.02)
        for b in module.buffers(recurse=recurse):
            b.zero_()


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, and RSS only grows)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def built(fn: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        module = fn()
    materialize_(module)
    return module.eval()


def peak_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def streamed_unet(dtype: torch.dtype) -> tuple[nn.Module, dict[str, float]]:
    """The SDXL UNet with our ID processors; big blocks materialise on call and time themselves."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        unet = sdxl.build_unet(sdxl.UNET_REAL, "meta")
    finally:
        torch.set_default_dtype(previous)
    adapter = build_adapter(unet, 1024, "meta")
    adapter.install(unet)
    clock = {"inside": 0.0}
    streamed = [m for m in unet.modules() if isinstance(m, STREAMED)]
    inside = {id(p) for m in streamed for p in m.parameters()}
    for module in unet.modules():  # everything small, outside the streamed blocks, stays
        if not isinstance(module, STREAMED) and any(id(p) not in inside for p in module.parameters(recurse=False)):
            materialize_(module, recurse=False)

    def before(module: nn.Module, _args: Any) -> None:
        materialize_(module)
        clock["start"] = time.perf_counter()

    def after(module: nn.Module, _args: Any, _out: Any) -> None:
        clock["inside"] += time.perf_counter() - clock["start"]
        module.to("meta")
        release_freed_memory()

    outermost = [m for m in streamed if not any(m is not o and m in list(o.modules()) for o in streamed)]
    for module in outermost:
        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)
    return unet.eval(), clock


@torch.inference_mode()
def unet_step(unet: nn.Module, clock: dict[str, float], images: int, dtype: torch.dtype) -> float:
    """Seconds inside the streamed blocks for one CFG step of ``images`` images (the small rest is ignored)."""
    rows = 2 * images
    tokens = torch.randn(2, 25, 2048)  # 4 references, id_mix off
    seqs = row_sequences(tokens, "fidelity", cfg=True) * images
    cond = IDConditioning.build(seqs, ["fidelity"] * rows, [0.8] * rows, torch.device("cpu"))
    scheduler = make_scheduler()
    scheduler.set_timesteps(4)
    added = {"text_embeds": torch.randn(rows, 1280, dtype=dtype), "time_ids": torch.ones(rows, 6, dtype=dtype)}
    clock["inside"] = 0.0
    unet(
        torch.randn(rows, 4, 128, 96, dtype=dtype),
        scheduler.timesteps[:1].expand(rows),
        encoder_hidden_states=torch.randn(rows, 77, 2048, dtype=dtype),
        added_cond_kwargs=added,
        cross_attention_kwargs={"id_cond": cond},
    )
    return clock["inside"]


def timed_once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.inference_mode()
def time_id_embedding() -> float:
    """One reference: BiSeNet parse at 512, EVA02-L at 336 (float32), IDEncoder (float32)."""
    parser_net = built(lambda: BiSeNet())
    eva = built(lambda: eva_mod.build_eva(eva_mod.REAL, "meta"))
    eva.rope = eva_mod.build_eva({**eva_mod.REAL, "depth": 1}).rope  # rope buffers are computed, not loaded
    idencoder = built(lambda: IDEncoder())
    face01 = torch.rand(1, 3, 512, 512)

    def run() -> None:
        features = eva_from_parsed(eva, face01, parse_labels(parser_net, face01), antialias=False)
        cond_tokens(idencoder, torch.randn(1, 512), features)

    run()  # warm-up
    return timed_once(run)


@torch.inference_mode()
def time_prompts(dtype: torch.dtype) -> float:
    """Both text encoders in the serving dtype, prompt and negative prompt; one encoder in memory at a time."""
    tokenizer = sdxl.byte_level_tokenizer()
    ids = tokenizer("portrait, impressionist painting", padding="max_length", max_length=77, return_tensors="pt")
    total = 0.0
    for cls, config in ((CLIPTextModel, sdxl.TEXT_REAL), (CLIPTextModelWithProjection, sdxl.TEXT_2_REAL)):
        with torch.device("meta"):
            model = cls(CLIPTextConfig(**config)).to(dtype)
        materialize_(model)
        for module in model.modules():  # the position ids are a computed buffer, not a weight
            if isinstance(getattr(module, "position_ids", None), torch.Tensor):
                module.position_ids = torch.arange(77)[None]
        total += 2 * timed_once(lambda model=model: model.eval()(ids.input_ids, output_hidden_states=True))
        del model
    return total


@torch.inference_mode()
def time_vae_decode() -> float:
    """float32 decode at 384x512, times 4 (the decoder is convolutional: cost ~ pixels); 768x1024 would not
    fit the 3 GB this script keeps to."""
    vae = built(lambda: AutoencoderKL.from_config(sdxl.VAE_REAL))
    return 4 * timed_once(lambda: vae.decode(torch.randn(1, 4, 64, 48) / 0.13025))


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dtype = torch_dtype(args.dtype)
    res: dict[str, Any] = {"unet_step_s": {}}

    unet, clock = streamed_unet(dtype)
    for images in args.batch_sizes:
        res["unet_step_s"][images] = round(unet_step(unet, clock, images, dtype), 3)
        print(json.dumps(res), flush=True)
    del unet
    res["vae_decode_s"] = round(time_vae_decode(), 3)
    print(json.dumps(res), flush=True)
    res["id_embedding_s_per_reference"] = round(time_id_embedding(), 3)
    print(json.dumps(res), flush=True)
    res["prompt_encoding_s"] = round(time_prompts(dtype), 3)
    print(json.dumps(res), flush=True)

    per_image = {b: round(args.steps * s / b + res["vae_decode_s"], 2) for b, s in res["unet_step_s"].items()}
    step1 = res["unet_step_s"].get(1, min(res["unet_step_s"].values()))
    original = args.steps * step1 + res["vae_decode_s"] + 4 * res["id_embedding_s_per_reference"]
    original += res["prompt_encoding_s"]
    report = {
        "benchmark": "pulid_streamed",
        "endpoint": "fal-ai/pulid",
        "device": "cpu",
        "kind": "CPU components, full-size random weights streamed block by block; one call each, timed once; "
        "per-image figures extrapolated (not an end-to-end run)",
        "dtype": f"UNet and text encoders {args.dtype}; VAE, EVA, IDEncoder, BiSeNet, ID projections float32",
        "size": "768x1024",
        "steps": args.steps,
        "references": 4,
        "components": res,
        "extrapolated_seconds_per_image": {"ours_by_batch": per_image, "original_way": round(original, 2)},
        "peak_rss_gib": peak_gib(),
        "machine": machine_info("cpu", ("torch", "diffusers", "transformers", "timm")),
    }
    out = write_result("pulid_streamed", "cpu", report, args.out)
    print(json.dumps(report["extrapolated_seconds_per_image"]), f"peak {report['peak_rss_gib']} GiB")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
