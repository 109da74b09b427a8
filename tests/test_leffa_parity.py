"""Leffa pose transfer against the goldens of the original code (shared/reference/leffa/fixtures, float32 CPU).

The fixture checkpoint is loaded strictly into our networks, the fixture's IUV image stands in for DensePose,
and the run is seeded as the original's: 1234 for its global RNG (VAE posteriors, initial noise) and 42 for
its DDPM generator, so no noise is injected: the draws themselves must match.

Tolerances (fixtures/README.md §4): tensors max|Δ| <= 1e-4 (the README measured <= 4.4e-6 for an independent
rebuild; 1-vs-2-thread noise is up to 1.5e-5); ``dec.latents_in`` (values near 100) <= 1e-4 relative to its
absmax; the uint8 image differs by at most 1 level on at most 0.1 % of the values.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipelines.contract import WeightSource
from pipelines.leffa.attention import FeaturesComplete
from pipelines.leffa.networks import load_networks
from pipelines.leffa.schema import LeffaPoseTransferInput
from tests.support.fake_ctx import FakeContext
from tests.support.leffa import FIXTURES, fixture_image, golden_pipeline, split_fixture_checkpoint

STEPS = 3


@pytest.fixture(scope="module")
def golden(reference_dir):
    return load_file(str(reference_dir / FIXTURES / "golden/golden.safetensors"))


def close(ours: torch.Tensor, ref: torch.Tensor, name: str, atol: float = 1e-4) -> None:
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err = (ours.float() - ref.float()).abs().max().item()
    assert err <= atol, f"{name}: max abs error {err:.3g} > {atol:.3g}"


def image_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    diff = (ours.int() - ref.int()).abs()
    assert diff.max().item() <= 1
    assert (diff > 0).float().mean().item() <= 1e-3


def prepared_item(pipe, reference_dir):
    images = {"pose": fixture_image(reference_dir, "src_pose_raw.png"),
              "person": fixture_image(reference_dir, "ref_person_raw.png")}  # fmt: skip
    inp = LeffaPoseTransferInput(pose_image_url="pose", person_image_url="person", num_inference_steps=STEPS,
                                 guidance_scale=2.5, seed=42)  # fmt: skip
    return pipe.prepare(inp, lambda url, loc: images[url])


def run_traced(pipe, reference_dir) -> tuple[dict[str, torch.Tensor], list]:
    trace: dict[str, torch.Tensor] = {}
    ctx = FakeContext()
    item = prepared_item(pipe, reference_dir)
    state = pipe.start([item], [1234], [42], trace=trace)
    while not pipe.done(state):
        pipe.step(state, ctx)
    return trace, pipe.finish(state, pipe.done(state), ctx)


@pytest.mark.parametrize("acceleration", [False, True])
def test_every_stage_matches_the_golden(reference_dir, golden, tmp_path, acceleration):
    pipe = golden_pipeline(reference_dir, tmp_path, acceleration)

    # preprocessing: letterbox (uint8-exact) and the inputs of the networks
    item = prepared_item(pipe, reference_dir)
    np.testing.assert_array_equal(item.extra["pose"], golden["inputs.src_resized_u8"].numpy())
    np.testing.assert_array_equal(item.extra["person"], golden["inputs.ref_resized_u8"].numpy())

    trace, results = run_traced(pipe, reference_dir)
    p = "acc." if acceleration else ""
    for name in ["vae.masked.mean", "vae.ref.mean", "lat.masked_image_latent", "lat.ref_image_latent",
                 "lat.densepose_latent", "noise.init"]:  # fmt: skip
        close(trace[name], golden[name], name)
    if acceleration:
        assert int(trace["acc.ref_t"]) == int(golden["acc.ref_t"])
        for n in range(28):
            close(trace[f"acc.ref_feats.{n:02d}"], golden[f"acc.ref_feats.{n:02d}"], f"acc.ref_feats.{n:02d}")
    else:
        for name in [k for k in golden if k.startswith("ref_feats.")]:
            close(trace[name], golden[name], name)
    for i in range(STEPS):
        assert int(trace[f"{p}step{i}.t"]) == int(golden[f"{p}step{i}.t"])
        for stage in ["latents_in", "eps_uncond", "eps_cond", "eps_cfg", "eps_final", "ddpm_variance_noise",
                      "pred_original_sample", "latents_out"]:  # fmt: skip
            close(trace[f"{p}step{i}.{stage}"], golden[f"{p}step{i}.{stage}"], f"{p}step{i}.{stage}")
        if not acceleration:
            close(trace[f"step{i}.unet_in"], golden[f"step{i}.unet_in"], f"step{i}.unet_in")
    close(trace["final.latents"], golden[f"{p}final.latents"], "final.latents")
    ref_z = golden[f"{p}dec.latents_in"]
    close(trace["dec.latents_in"], ref_z, "dec.latents_in", 1e-4 * ref_z.abs().max().item())
    close(trace["dec.sample"], golden[f"{p}dec.sample"], "dec.sample")
    image_close(trace["out.image_u8"][0], golden[f"{p}out.image_u8"].reshape(256, 192, 3))
    assert results[0].image.width == 192 and results[0].image.height == 256
    assert results[0].seed == 1234 and results[0].has_nsfw_concepts is False


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_teacher_forced_step(reference_dir, golden, tmp_path, dtype):
    """The networks in half precision on the golden step-0 inputs: noise predictions within 3 % of their range
    (fixtures/README.md §4 suggests rtol of a few 1e-2 for fp16/bf16 builds)."""
    checkpoint = split_fixture_checkpoint(reference_dir, tmp_path)
    nets = load_networks(WeightSource.tiny(), dtype=dtype, checkpoint_dir=checkpoint)
    t = golden["step0.t"].reshape(1).repeat(2)
    with torch.inference_mode():
        with contextlib.suppress(FeaturesComplete):  # records the reference features
            nets.reference_unet(golden["lat.ref_latent_cfg"].to(dtype), t, encoder_hidden_states=None)
        eps = nets.unet(golden["step0.unet_in"].to(dtype), t, encoder_hidden_states=None).sample.float()
    nets.features.clear()
    for ours, name in [(eps[:1], "step0.eps_uncond"), (eps[1:], "step0.eps_cond")]:
        ref = golden[name]
        close(ours, ref, name, 0.03 * (ref.max() - ref.min()).item())
