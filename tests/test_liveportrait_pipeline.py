"""LivePortraitPipeline end to end on a real photo, tiny networks and tiny face-model stand-ins."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from pipelines.contract import ItemError, WeightSource
from pipelines.liveportrait.pipeline import LivePortraitPipeline
from pipelines.liveportrait.schema import LivePortraitImageInput, LivePortraitImageOutput
from tests.support.fake_ctx import FailingSaveContext, FakeContext

PHOTO = Image.fromarray(skimage.data.astronaut())  # 512 x 512
BLANK = Image.new("RGB", (320, 240), (128, 128, 128))


def loader_for(image: Image.Image):
    def load(url: str, loc: list) -> Image.Image:
        return image

    return load


@pytest.fixture(scope="module")
def pipeline() -> LivePortraitPipeline:
    return LivePortraitPipeline.load(WeightSource.tiny(seed=0))


def run(pipeline, inputs: list[LivePortraitImageInput], image: Image.Image = PHOTO):
    ctx = FakeContext()
    prepared = [pipeline.prepare(inp, loader_for(image)) for inp in inputs]
    outputs = pipeline.run(prepared, ctx)
    return outputs, ctx


def test_paste_back_on_and_off(pipeline):
    inputs = [
        LivePortraitImageInput(image_url="x", smile=0.8, output_format="png"),
        LivePortraitImageInput(image_url="x", flag_pasteback=False, dsize=256, aaa=40),
    ]
    outputs, ctx = run(pipeline, inputs)
    assert ctx.steps[-1] == (3, 3)
    pasted, face = (LivePortraitImageOutput.model_validate(o.model_dump()) for o in outputs)
    assert (pasted.image.width, pasted.image.height, pasted.image.content_type) == (512, 512, "image/png")
    assert (face.image.width, face.image.height, face.image.content_type) == (256, 256, "image/jpeg")

    # Paste-back changes the face region only: outside the warped mask the photo is untouched.
    src = pipeline.prepare(inputs[0], loader_for(PHOTO)).extra["source"]
    out = np.asarray(ctx.saved[0])
    outside = src.mask[..., 0] == 0
    assert 0 < outside.mean() < 1
    np.testing.assert_array_equal(out[outside], src.original[outside])
    assert np.abs(out[~outside].astype(int) - src.original[~outside]).mean() > 1


def test_without_crop_the_whole_image_is_edited(pipeline):
    outputs, _ = run(pipeline, [LivePortraitImageInput(image_url="x", flag_do_crop=False, dsize=384)])
    assert (outputs[0].image.width, outputs[0].image.height) == (384, 384)


def test_safety_checker_refuses_a_faceless_image(pipeline):
    with pytest.raises(ItemError) as err:
        pipeline.prepare(LivePortraitImageInput(image_url="x", enable_safety_checker=True), loader_for(BLANK))
    assert err.value.status_code == 422
    assert err.value.detail[0]["loc"] == ["body", "image_url"]
    assert err.value.detail[0]["type"] == "face_not_detected"


def test_no_face_without_safety_checker(pipeline):
    # A crop needs a face (the original fails here too) ...
    with pytest.raises(ItemError) as err:
        pipeline.prepare(LivePortraitImageInput(image_url="x"), loader_for(BLANK))
    assert err.value.status_code == 422 and "flag_do_crop" in err.value.detail[0]["msg"]
    # ... but the whole-image edit runs, without lip-zero (no landmarks).
    inp = LivePortraitImageInput(image_url="x", flag_do_crop=False, blink=5)
    prepared = pipeline.prepare(inp, loader_for(BLANK))
    assert prepared.extra["source"].c_s_lip is None
    outputs = pipeline.run([prepared], FakeContext())
    assert (outputs[0].image.width, outputs[0].image.height) == (512, 512)


def test_a_batch_equals_single_runs(pipeline):
    inputs = [
        LivePortraitImageInput(image_url="x", smile=1.0, rotate_yaw=10, output_format="png"),
        LivePortraitImageInput(image_url="x", blink=-10, wink=5, flag_lip_zero=False, output_format="png"),
        LivePortraitImageInput(image_url="x", aaa=60, flag_do_rot=False, vx_ratio=0.1, output_format="png"),
        LivePortraitImageInput(image_url="x", pupil_x=20, flag_pasteback=False, dsize=320, output_format="png"),
    ]
    _, batch_ctx = run(pipeline, inputs)
    for i, inp in enumerate(inputs):
        _, single_ctx = run(pipeline, [inp])
        batched, single = np.asarray(batch_ctx.saved[i]), np.asarray(single_ctx.saved[0])
        assert batched.shape == single.shape
        diff = np.abs(batched.astype(int) - single.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, f"item {i}: batching changed the output"
    # the knobs really differ between items
    assert not np.array_equal(np.asarray(batch_ctx.saved[0]), np.asarray(batch_ctx.saved[1]))


def test_concurrent_finishing_gives_the_same_bytes_as_sequential(pipeline, monkeypatch):
    """Paste-back + encoding run on the shared finish pool; the files must equal the one-thread path's."""
    from pipelines.common import per_item

    inputs = [
        LivePortraitImageInput(image_url="x", smile=1.0),  # jpeg, pasted back
        LivePortraitImageInput(image_url="x", blink=-10, output_format="png"),
        LivePortraitImageInput(image_url="x", pupil_x=20, flag_pasteback=False, dsize=320),
        LivePortraitImageInput(image_url="x", aaa=60, output_format="png"),
    ]
    concurrent, ctx = run(pipeline, inputs)
    monkeypatch.setattr(per_item, "finish_threads", lambda: 1)
    sequential, seq_ctx = run(pipeline, inputs)
    assert [o.image.url for o in concurrent] == [o.image.url for o in sequential]
    assert [o.image.content_type for o in concurrent] == ["image/jpeg", "image/png", "image/jpeg", "image/png"]
    assert ctx.steps == seq_ctx.steps


def test_endpoint_resolves_to_this_pipeline_and_its_schema_imports_no_model_library():
    import subprocess
    import sys

    from pipelines import registry
    from pipelines.liveportrait import ENDPOINT

    assert registry.pipeline_class(ENDPOINT) is LivePortraitPipeline
    code = "import sys, pipelines.liveportrait; print(sorted({'torch','cv2','onnxruntime'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lip_zero_only_where_asked_and_the_mouth_is_open(pipeline):
    import torch

    from pipelines.liveportrait.pipeline import SourcePortrait

    def source(c_s_lip):
        return SourcePortrait(np.zeros((8, 8, 3), np.uint8), np.zeros((256, 256, 3), np.uint8), None, None, c_s_lip)

    inputs = [LivePortraitImageInput(image_url="x", flag_lip_zero=flag) for flag in (True, False, True, True)]
    sources = [source(0.3), source(0.3), source(0.01), source(None)]  # open, open, closed, no landmarks
    x_s = torch.randn(4, 21, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    with torch.no_grad():
        delta = pipeline._lip_zero(inputs, sources, x_s)
    assert delta[0].abs().sum() > 0
    assert torch.equal(delta[1:], torch.zeros_like(delta[1:]))


def test_one_items_failure_after_the_networks_fails_only_that_item(pipeline):
    inputs = [
        LivePortraitImageInput(image_url="x", smile=1.0, output_format="png"),
        LivePortraitImageInput(image_url="x", blink=-10, output_format="png"),
        LivePortraitImageInput(image_url="x", pupil_x=20, flag_pasteback=False, output_format="png"),
    ]
    ctx = FailingSaveContext(failing_item=1)
    outputs = pipeline.run([pipeline.prepare(inp, loader_for(PHOTO)) for inp in inputs], ctx)
    assert isinstance(outputs[1], ItemError)
    assert (outputs[1].status_code, outputs[1].error_type) == (500, "internal_server_error")
    assert "disk full" in outputs[1].detail
    assert ctx.steps[-1] == (3, 3)
    for i in (0, 2):
        assert isinstance(outputs[i], LivePortraitImageOutput)
        _, single_ctx = run(pipeline, [inputs[i]])
        diff = np.abs(np.asarray(ctx.saved[i]).astype(int) - np.asarray(single_ctx.saved[0]).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, f"item {i} differs from its single run"
