"""CatVTON's stepwise pipeline with tiny weights: batching, joining and leaving mid-flight, seeds, sizes.

A request's output must not depend on which other requests shared its UNet calls (ARCHITECTURE.md §4.1).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from pipelines.catvton import pipeline as catvton_pipeline
from pipelines.catvton.pipeline import CatVTONPipeline
from pipelines.catvton.preprocess import target_size
from pipelines.catvton.schema import CatVTONInput
from pipelines.common.schema_types import ImageSize
from pipelines.contract import ItemError, Prepared, WeightSource
from tests.support.fake_ctx import FakeContext

SIZE = {"width": 100, "height": 130}  # rounded down to 96 x 128
STEPS = 4
PERSON = Image.fromarray(skdata.astronaut())
GARMENT = Image.fromarray(
    np.kron(np.array([[[230, 40, 40]], [[250, 250, 250]]] * 6, np.uint8), np.ones((10, 150, 1), np.uint8))
)


@pytest.fixture(scope="module")
def pipe() -> CatVTONPipeline:
    return CatVTONPipeline.load(WeightSource.tiny())


def request(**overrides: object) -> CatVTONInput:
    fields = {"human_image_url": "person", "garment_image_url": "garment", "cloth_type": "lower"}
    fields |= {"image_size": SIZE, "num_inference_steps": STEPS, "guidance_scale": 2.5}
    return CatVTONInput(**(fields | overrides))


def prepare(pipe: CatVTONPipeline, inp: CatVTONInput, key: int = 0) -> Prepared:
    images = {"person": PERSON, "garment": GARMENT}
    prepared = pipe.prepare(inp, lambda url, loc: images[url])
    prepared.key = key
    return prepared


def assert_same_image(batched: np.ndarray, single: np.ndarray, what: str) -> None:
    """Batched kernels sum in another order than single ones: float noise may flip a rounding (as LivePortrait)."""
    assert batched.shape == single.shape
    diff = np.abs(batched.astype(int) - single.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, f"{what}: batching changed the output"


def alone(pipe: CatVTONPipeline, inp: CatVTONInput, seed: int) -> np.ndarray:
    ctx = FakeContext(seeds=[seed])
    (result,) = pipe.run([prepare(pipe, inp)], ctx)
    assert not isinstance(result, ItemError), result
    return np.asarray(ctx.saved[0])


def test_output_size_progress_and_logs(pipe: CatVTONPipeline) -> None:
    ctx = FakeContext(seeds=[3])
    (result,) = pipe.run([prepare(pipe, request())], ctx)
    assert (result.image.width, result.image.height) == (96, 128)
    assert result.image.content_type == "image/png"
    assert ctx.item_steps[0] == [(i, STEPS) for i in range(1, STEPS + 1)]
    messages = [m for _, _, m in ctx.logs]
    assert any(m.startswith("AutoMasker: lower mask covers") for m in messages)
    assert f"denoising step {STEPS}/{STEPS}" in messages and "decoding" in messages


def test_prepare_keeps_only_the_target_resolution(pipe: CatVTONPipeline) -> None:
    prepared = prepare(pipe, request())
    assert {k: im.size for k, im in prepared.images.items()} == {
        "human_image_url": (96, 128),
        "garment_image_url": (96, 128),
    }


def test_seed_gives_the_same_bytes_and_other_seeds_differ(pipe: CatVTONPipeline) -> None:
    first, again, other = alone(pipe, request(), 7), alone(pipe, request(), 7), alone(pipe, request(), 8)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_batched_equals_single(pipe: CatVTONPipeline) -> None:
    inputs = [request(), request(cloth_type="overall", guidance_scale=4.0), request(guidance_scale=1.0)]
    seeds = [11, 12, 13]
    ctx = FakeContext(seeds=seeds)
    results = pipe.run([prepare(pipe, inp) for inp in inputs], ctx)
    assert not any(isinstance(r, ItemError) for r in results)
    for i, (inp, seed) in enumerate(zip(inputs, seeds, strict=True)):
        assert_same_image(np.asarray(ctx.saved[i]), alone(pipe, inp, seed), f"item {i}")
    assert not np.array_equal(np.asarray(ctx.saved[0]), np.asarray(ctx.saved[1]))


def test_joined_mid_flight_and_dropped_rows(pipe: CatVTONPipeline) -> None:
    """A joins, runs 2 steps; B joins (other timestep in the same UNet call); C joins and is dropped."""
    a, b, c = request(), request(cloth_type="overall", guidance_scale=3.0), request(cloth_type="upper")
    ctx = FakeContext(seeds=[21, 22, 23])
    state = pipe.begin([prepare(pipe, a, 0)], ctx)
    for _ in range(2):
        pipe.step(state, ctx)
    state = pipe.merge(state, pipe.begin([prepare(pipe, b, 1), prepare(pipe, c, 2)], ctx))
    pipe.step(state, ctx)
    pipe.drop(state, [2])
    assert sorted(pipe.keys(state)) == [0, 1]
    results = {}
    while pipe.keys(state):
        pipe.step(state, ctx)
        finished = pipe.done(state)
        results.update(zip(finished, pipe.finish(state, finished, ctx), strict=True))
    assert sorted(results) == [0, 1]
    assert ctx.item_steps[1] == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert_same_image(np.asarray(ctx.saved[0]), alone(pipe, a, 21), "A")
    assert_same_image(np.asarray(ctx.saved[1]), alone(pipe, b, 22), "B (joined after 2 steps)")


def test_a_failing_item_fails_alone(pipe: CatVTONPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    real = catvton_pipeline.cloth_agnostic_mask

    def failing_for_outer(*maps: np.ndarray, cloth_type: str) -> np.ndarray:
        if cloth_type == "outer":
            raise ValueError("broken label map")
        return real(*maps, cloth_type=cloth_type)

    monkeypatch.setattr(catvton_pipeline, "cloth_agnostic_mask", failing_for_outer)
    ctx = FakeContext(seeds=[31, 32])
    bad, good = pipe.run([prepare(pipe, request(cloth_type="outer")), prepare(pipe, request())], ctx)
    assert isinstance(bad, ItemError) and bad.status_code == 500 and "broken label map" in str(bad.detail)
    assert not isinstance(good, ItemError)
    monkeypatch.undo()
    assert_same_image(np.asarray(ctx.saved[1]), alone(pipe, request(), 32), "the good item")


def test_cancelled_item_leaves_the_batch(pipe: CatVTONPipeline) -> None:
    ctx = FakeContext(seeds=[41, 42], cancelled={0})
    cancelled, _ = pipe.run([prepare(pipe, request()), prepare(pipe, request())], ctx)
    assert isinstance(cancelled, ItemError) and cancelled.error_type == "request_cancelled"
    assert_same_image(np.asarray(ctx.saved[1]), alone(pipe, request(), 42), "the kept item")


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("portrait_4_3", (768, 1024)),
        ("square", (512, 512)),
        ("landscape_16_9", (1024, 576)),
        (ImageSize(width=1280, height=1707), (1280, 1704)),
        (ImageSize(width=64, height=2048), (64, 2048)),
    ],
)
def test_sizes_round_down_to_multiples_of_8(size: object, expected: tuple[int, int]) -> None:
    assert target_size(size) == expected


@pytest.mark.parametrize(("width", "height", "field"), [(60, 512, "width"), (512, 2056, "height")])
def test_out_of_range_sizes_are_a_422_naming_the_field(
    pipe: CatVTONPipeline, width: int, height: int, field: str
) -> None:
    inp = request(image_size={"width": width, "height": height})
    with pytest.raises(ItemError) as err:
        pipe.prepare(inp, lambda url, loc: pytest.fail("fetched an image for an invalid size"))
    assert err.value.status_code == 422
    assert err.value.detail[0]["loc"] == ["body", "image_size", field]
    assert pipe.batch_key(inp) == ("invalid",)


def test_batch_key_and_memory_hooks(pipe: CatVTONPipeline) -> None:
    assert pipe.batch_key(request()) == (96, 128, STEPS) == pipe.step_key(request(guidance_scale=1.0, seed=5))
    assert pipe.batch_key(request(num_inference_steps=5)) != pipe.batch_key(request())
    assert pipe.total_steps(request()) == STEPS
    assert pipe.resident_bytes() > 0
    assert pipe.row_bytes(request(image_size="portrait_4_3")) == 4 * pipe.row_bytes(request(image_size="square")) * (
        768 * 1024
    ) // (4 * 512 * 512)


def test_any_integer_seed_is_accepted(pipe: CatVTONPipeline) -> None:
    """fal's ``seed`` has no bounds; torch generators take 64 bits."""
    ctx = FakeContext(seeds=[2**70, -5])
    results = pipe.run(
        [prepare(pipe, request(num_inference_steps=1)), prepare(pipe, request(num_inference_steps=1))], ctx
    )
    assert not any(isinstance(r, ItemError) for r in results)
