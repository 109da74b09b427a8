"""Leffa's UNet work per image and denoising step at 768x1024, counted (not timed) on the meta device: ours
(queries from own tokens, reference UNet stopped after its last recorded block, one zero-latent pass per
distinct timestep of a batch) against the original's way (queries over own + reference tokens, the whole
reference UNet, two reference rows per request). Machine-independent; no weights, no memory.

    python -m benchmarks.leffa_flops
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.machine import machine_info, write_result
from pipelines.leffa import attention
from pipelines.leffa.configs import REAL
from pipelines.leffa.networks import build_meta


class OriginalConcat(attention.ReferenceAttnProcessor):
    def __call__(self, attn, hidden_states, *args, **kwargs):  # type: ignore[no-untyped-def]
        n = hidden_states.shape[1]
        return self.attention(attn, torch.cat([hidden_states, self.features[self.block]], dim=1))[:, :n]


def count(fn) -> float:  # type: ignore[no-untyped-def]
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


def main() -> None:
    modules = build_meta(REAL)
    reference, unet = modules["unet_encoder"], modules["unet"]
    for u in (reference, unet):
        u.register_to_config(addition_embed_type=None)
    features: attention.Features = {}
    blocks = attention.install_reference(reference, features)
    h, w = REAL.latent_hw

    def reference_pass(rows: int, stop_early: bool) -> float:
        for proc in reference.attn_processors.values():
            if isinstance(proc, attention.RecordingProcessor):
                proc.last = stop_early and proc.block == blocks[-1]
        x = torch.zeros((rows, 4, h, w), device="meta")
        t = torch.zeros((rows,), dtype=torch.long, device="meta")

        def run() -> None:
            with contextlib.suppress(attention.FeaturesComplete):
                reference(x, t, encoder_hidden_states=None)

        return count(run)

    def generative_pass(requests: int, original: bool) -> float:
        processors = {}
        for name in unet.attn_processors:
            block = name.removesuffix(".attn1.processor")
            if name.endswith("attn1.processor"):
                processors[name] = (OriginalConcat if original else attention.ReferenceAttnProcessor)(block, features)
            else:
                processors[name] = attention.SkipAttnProcessor()
        unet.set_attn_processor(processors)
        reference_pass(2 * requests, False)  # fills the features at this batch size
        x = torch.zeros((2 * requests, 12, h, w), device="meta")
        t = torch.zeros((2 * requests,), dtype=torch.long, device="meta")
        return count(lambda: unet(x, t, encoder_hidden_states=None))

    results = []
    original_ref, original_gen = reference_pass(2, False), generative_pass(1, True)
    total = original_ref + original_gen
    results.append({"way": "original", "batch_size": 1, "reference_tflop": round(original_ref, 2),
                    "generative_tflop": round(original_gen, 2), "per_image_step_tflop": round(total, 2)})  # fmt: skip
    for bs in (1, 2, 4):
        ref = reference_pass(bs + 1, True) / bs  # one zero-latent row (all at one timestep) + one row per request
        gen = generative_pass(bs, False) / bs
        results.append({"way": "ours", "batch_size": bs, "reference_tflop": round(ref, 2),
                        "generative_tflop": round(gen, 2), "per_image_step_tflop": round(ref + gen, 2),
                        "ref_acceleration_per_image_step_tflop": round(gen, 2)})  # fmt: skip
        print(results[-1], flush=True)
    print(results[0])
    report = {
        "benchmark": "leffa_flops",
        "what": "UNet TFLOP per image per denoising step at 768x1024 (CFG), counted by torch FlopCounterMode on the "
        "meta device; VAE, DensePose and safety checker (once per request, the same both ways) not included. "
        "ref_acceleration adds one reference pass per request instead of one per step.",
        "results": results,
        "machine": machine_info("cpu", ("torch", "diffusers")),
    }
    print(f"wrote {write_result('leffa_flops', 'cpu', report)}")


if __name__ == "__main__":
    main()
