"""LeffaPoseTransferPipeline with tiny random weights: the stepwise protocol (rows joining mid-flight and
leaving give the same image as running alone), seeds, the safety checker, the no-person error and the
float16 VAE overflow guard.

"The same image" allows float rounding: BLAS and oneDNN kernels are not batch-invariant (the time-embedding GEMM
with 2 rows rounds differently from 4 rows, ~2e-7 here), so a different batch composition may move a pixel by
one level. A row mixing up another row's timestep, noise or reference features moves it by tens of levels.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from pipelines.contract import ItemError, WeightSource
from pipelines.leffa.pipeline import LeffaPoseTransferPipeline, LeffaState
from pipelines.leffa.safety import SafetyChecker
from pipelines.leffa.schema import LeffaPoseTransferInput, LeffaPoseTransferOutput
from tests.support.fake_ctx import FakeContext
from tests.support.leffa import GivenIUV

PHOTO = skimage.data.astronaut()
IMAGES = {"pose": Image.fromarray(PHOTO[:, 100:400]), "person": Image.fromarray(PHOTO)}


@pytest.fixture(scope="module")
def pipeline() -> LeffaPoseTransferPipeline:
    return LeffaPoseTransferPipeline.load(WeightSource.tiny(), ref_acceleration=False)


def item(pipe, key: int, steps: int = 4, **kw):
    inp = LeffaPoseTransferInput(pose_image_url="pose", person_image_url="person", num_inference_steps=steps, **kw)
    prepared = pipe.prepare(inp, lambda url, loc: IMAGES[url])
    prepared.key = key
    return prepared


def pixels(result) -> np.ndarray:
    assert isinstance(result, LeffaPoseTransferOutput), result
    data = base64.b64decode(result.image.url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def same_image(ours: np.ndarray, expected: np.ndarray) -> None:
    diff = np.abs(ours.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (diff.max(), (diff > 0).mean())


def drive(pipe, ctx, state, results) -> None:
    """One step boundary: a step, then the finished rows retired."""
    pipe.step(state, ctx)
    finished = pipe.done(state)
    if finished:
        results.update(zip(finished, pipe.finish(state, finished, ctx), strict=True))


def alone(pipe, seed: int, steps: int = 4) -> np.ndarray:
    ctx = FakeContext(seeds=[seed])
    return pixels(pipe.run([item(pipe, 0, steps)], ctx)[0])


@pytest.mark.parametrize("acceleration", [False, True])
def test_rows_joining_and_leaving_mid_flight_match_running_alone(pipeline, acceleration):
    pipeline.ref_acceleration = acceleration
    try:
        expected = {7: alone(pipeline, 7), 8: alone(pipeline, 8), 9: alone(pipeline, 9, steps=3)}
        ctx = FakeContext(seeds=[0] * 10)
        ctx.seeds[1], ctx.seeds[2], ctx.seeds[3] = 7, 8, 9
        results: dict = {}
        state = pipeline.begin([item(pipeline, 1), item(pipeline, 3, steps=3)], ctx)
        drive(pipeline, ctx, state, results)
        drive(pipeline, ctx, state, results)
        # key 2 joins at a step boundary while keys 1 and 3 are at step 2: one UNet call, three timesteps
        state = pipeline.merge(state, pipeline.begin([item(pipeline, 2)], ctx))
        assert sorted(pipeline.keys(state)) == [1, 2, 3]
        drive(pipeline, ctx, state, results)  # key 3 finishes here (3 steps)
        assert 3 in results and sorted(pipeline.keys(state)) == [1, 2]
        while pipeline.keys(state):
            drive(pipeline, ctx, state, results)
        for key, seed in [(1, 7), (2, 8), (3, 9)]:
            same_image(pixels(results[key]), expected[seed])
            assert results[key].seed == seed
        assert ctx.item_steps[2] == [(i, 4) for i in range(1, 5)]

        # a row dropped (cancelled) mid-flight leaves the others unchanged
        results = {}
        state = pipeline.begin([item(pipeline, 1), item(pipeline, 2)], ctx)
        drive(pipeline, ctx, state, results)
        pipeline.drop(state, [1])
        assert pipeline.keys(state) == [2]
        while pipeline.keys(state):
            drive(pipeline, ctx, state, results)
        assert list(results) == [2]
        same_image(pixels(results[2]), expected[8])
    finally:
        pipeline.ref_acceleration = False


def test_seed_reproducible_batched_equals_single(pipeline):
    ctx = FakeContext(seeds=[5, 6, 5])
    batch = pipeline.run([item(pipeline, i, steps=2) for i in range(3)], ctx)
    images = [pixels(r) for r in batch]
    assert [r.seed for r in batch] == [5, 6, 5]
    same_image(images[0], images[2])
    assert np.abs(images[0].astype(int) - images[1]).mean() > 5  # another seed, another image
    torch.manual_seed(123)  # the global RNG plays no part: the same seed alone gives the same bytes again
    first = alone(pipeline, 6, steps=2)
    torch.manual_seed(456)
    np.testing.assert_array_equal(alone(pipeline, 6, steps=2), first)
    same_image(images[1], first)
    assert images[0].shape == (256, 192, 3) and not any(r.has_nsfw_concepts for r in batch)


def test_flagged_image_is_black_and_reported(pipeline):
    original = pipeline.safety
    pipeline.safety = SafetyChecker.load(WeightSource.tiny(), pipeline.networks.config, "cpu", torch.float32, True)
    try:
        ctx = FakeContext(seeds=[3, 3])
        checked, unchecked = pipeline.run(
            [item(pipeline, 0, steps=1), item(pipeline, 1, steps=1, enable_safety_checker=False)], ctx
        )
    finally:
        pipeline.safety = original
    assert checked.has_nsfw_concepts is True and not pixels(checked).any()
    assert unchecked.has_nsfw_concepts is False and pixels(unchecked).any()


def test_no_person_in_the_pose_image_is_a_422_for_that_item(pipeline):
    original = pipeline.densepose
    pipeline.densepose = GivenIUV(None)  # type: ignore[assignment]
    try:
        (result,) = pipeline.run([item(pipeline, 0, steps=2)], FakeContext())
    finally:
        pipeline.densepose = original
    assert isinstance(result, ItemError) and result.status_code == 422
    assert result.detail[0]["loc"] == ["body", "pose_image_url"]


def test_half_precision_vae_overflow_is_decoded_again_in_float32():
    pipe = LeffaPoseTransferPipeline.load(WeightSource.tiny(), dtype="float16")
    vae = pipe.networks.vae
    latents = torch.randn((1, 4, 32, 24), generator=torch.Generator().manual_seed(0))
    reference = pipe._decode(latents, FakeContext(), [0], LeffaState([])).float()
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(4000.0)  # activations beyond float16's 65504; float32 copes
        vae.decoder.conv_in.bias.mul_(4000.0)
    ctx = FakeContext()
    decoded = pipe._decode(latents, ctx, [0], LeffaState([]))
    assert torch.isfinite(decoded).all()
    assert any("float32" in message for _, _, message in ctx.logs)
    assert not torch.equal(decoded, reference)  # really decoded by the (scaled) float32 copy


def test_memory_hooks(pipeline):
    nets = pipeline.networks
    unet_bytes = sum(p.numel() * 4 for p in nets.unet.parameters())
    assert pipeline.resident_bytes() > 2 * unet_bytes  # two UNets, the VAE, DensePose, the safety checker
    inp = LeffaPoseTransferInput(pose_image_url="p", person_image_url="q")
    # every reference feature, [uncond, cond], float32: tiny canvas 192x256 -> 28 features
    features = sum(f.numel() for f in pipeline._reference_features(
        [pipeline.begin([item(pipeline, 0, steps=1)], FakeContext()).rows[0]], [1]).values())  # fmt: skip
    assert pipeline.row_bytes(inp) >= features * 4


def test_nan_latents_fail_the_item_instead_of_a_black_image(pipeline):
    ctx = FakeContext(seeds=[1, 2])
    state = pipeline.begin([item(pipeline, 0, steps=1), item(pipeline, 1, steps=1)], ctx)
    pipeline.step(state, ctx)
    state.rows[0].latents = torch.full_like(state.rows[0].latents, float("nan"))
    failed, fine = pipeline.finish(state, [0, 1], ctx)
    assert isinstance(failed, ItemError) and failed.status_code == 500
    assert isinstance(fine, LeffaPoseTransferOutput) and pixels(fine).any()
