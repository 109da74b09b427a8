"""DWPose pipeline through the Pipeline interface: tiny models end to end on real photos, batching,
loading from a weights dir, and the full path on the reference stand-ins against fal's canvases."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
skdata = pytest.importorskip("skimage.data")

import weights  # noqa: E402
from pipelines import registry  # noqa: E402
from pipelines.contract import WeightSource  # noqa: E402
from pipelines.dwpose import ENDPOINT  # noqa: E402
from pipelines.dwpose.pipeline import DWPosePipeline  # noqa: E402
from pipelines.dwpose.preprocess import output_size  # noqa: E402
from pipelines.dwpose.schema import DWPoseInput, DWPoseOutput  # noqa: E402
from tests.support.fake_ctx import FailingSaveContext, FakeContext  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> DWPosePipeline:
    return DWPosePipeline.load(WeightSource.tiny(seed=0))


def rgb(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.stack([array] * 3, axis=-1) if array.ndim == 2 else array).convert("RGB")


def run_items(pipe: DWPosePipeline, images: list[Image.Image], modes: list[str]):
    """One batch through prepare + run; returns (outputs, context)."""
    prepared = [
        pipe.prepare(DWPoseInput(image_url=f"https://x/{i}.png", draw_mode=mode), lambda url, loc, img=img: img)
        for i, (img, mode) in enumerate(zip(images, modes, strict=True))
    ]
    ctx = FakeContext()
    return pipe.run(prepared, ctx), ctx


def decode_data_uri(url: str) -> Image.Image:
    header, _, payload = url.partition(",")
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_endpoint_points_at_the_pipeline():
    assert registry.pipeline_class(ENDPOINT) is DWPosePipeline
    assert DWPosePipeline.max_batch >= 8 and DWPosePipeline.max_wait_ms > 0


def test_package_import_stays_free_of_model_libraries():
    code = "import sys, pipelines.dwpose; print(sorted({'onnxruntime', 'cv2', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("crop", "mode"), [((slice(None), slice(None)), "body-pose"), ((slice(0, 300), slice(50, 250)), "full-pose")]
)
def test_end_to_end_on_a_photo(tiny, crop, mode):
    photo = skdata.astronaut()[crop]
    (out,), ctx = run_items(tiny, [rgb(photo)], [mode])
    assert isinstance(out, DWPoseOutput)
    DWPoseOutput.model_validate(out.model_dump())  # schema-valid
    height, width = output_size(*photo.shape[:2])
    assert min(height, width) == 512
    assert (out.image.width, out.image.height) == (width, height)
    png = decode_data_uri(out.image.url)
    assert png.size == (width, height) and png.mode == "RGB"
    pixels = np.asarray(png)
    assert pixels.any(), "a person is drawn"
    assert ctx.steps[-1] == (3, 3)
    assert any("person(s) detected" in message for _, _, message in ctx.logs)


def test_tiny_detector_finds_people_on_photos():
    pipe = DWPosePipeline.load(WeightSource.tiny(seed=0))
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.camera()]
    items = [pipe.preprocess(np.asarray(rgb(p))) for p in photos]
    people = pipe.estimate(items)
    assert all(len(p) >= 1 for p in people)
    for person_set, item in zip(people, items, strict=True):
        h, w = item["padded"].image.shape[:2]
        assert person_set.shape[1:] == (134, 3)
        body = person_set[:, :18]
        visible = body[..., 2] >= 0.3
        assert visible.sum() >= 10
        assert (body[visible][:, 0] > -w).all() and (body[visible][:, 1] < 2 * h).all()


def test_extremely_elongated_image_is_a_422_on_image_url(tiny):
    from pipelines.contract import ItemError

    strip = Image.new("RGB", (8000, 10))
    with pytest.raises(ItemError) as err:
        tiny.prepare(DWPoseInput(image_url="https://x/strip.png"), lambda url, loc: strip)
    assert err.value.status_code == 422
    assert err.value.detail[0]["loc"] == ["body", "image_url"]


def test_no_person_gives_a_black_image(tiny, monkeypatch):
    calls = []

    def silent_detector(x):
        calls.append(x.shape)
        return [np.zeros((x.shape[0], 8400, 85), np.float32)]

    monkeypatch.setattr(tiny, "det_model", silent_detector)
    monkeypatch.setattr(tiny, "pose_model", lambda x: pytest.fail("pose model must not run without people"))
    (out,), _ = run_items(tiny, [rgb(skdata.coffee())], ["full-pose"])
    png = np.asarray(decode_data_uri(out.image.url))
    assert png.shape == (*output_size(*skdata.coffee().shape[:2]), 3)
    assert not png.any()
    assert calls


class CountingRun:
    """Wraps an onnxruntime session's ``run`` and records the batch size of each call."""

    def __init__(self, session):
        self.session, self.inner, self.batches = session, session.run, []

    def __call__(self, output_names, feeds, *args, **kwargs):
        self.batches.append(next(iter(feeds.values())).shape[0])
        return self.inner(output_names, feeds, *args, **kwargs)


def test_batch_of_eight_equals_single_runs_and_calls_pose_once(monkeypatch):
    pipe = DWPosePipeline.load(WeightSource.tiny(seed=1))
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.camera(), skdata.rocket()]
    images = [rgb(p) for p in photos] + [rgb(skdata.astronaut()[100:400, 50:300]), rgb(skdata.coffee()[:, ::-1])]
    images.append(rgb(skdata.chelsea()[::2, ::2]))
    modes = [
        "body-pose",
        "full-pose",
        "face-pose",
        "hand-pose",
        "face-hand-mask",
        "face-mask",
        "hand-mask",
        "body-pose",
    ]
    singles = [
        np.asarray(decode_data_uri(run_items(pipe, [img], [m])[0][0].image.url))
        for img, m in zip(images, modes, strict=True)
    ]

    det_spy = CountingRun(pipe.det_model.session)
    pose_spy = CountingRun(pipe.pose_model.session)
    monkeypatch.setattr(pipe.det_model.session, "run", det_spy)
    monkeypatch.setattr(pipe.pose_model.session, "run", pose_spy)
    outputs, ctx = run_items(pipe, images, modes)

    assert len(pose_spy.batches) == 1, "all person crops of the batch in one pose-model call"
    people = [int(message.split()[0]) for _, _, message in ctx.logs]
    assert pose_spy.batches[0] == sum(people) > len(images)  # several images have more than one person
    assert det_spy.batches == [8]  # tiny detector has a dynamic batch axis
    for single, out in zip(singles, outputs, strict=True):
        np.testing.assert_array_equal(np.asarray(decode_data_uri(out.image.url)), single)


def test_concurrent_finishing_gives_the_same_bytes_as_sequential(tiny, monkeypatch):
    """Drawing + PNG encoding run on the shared finish pool; the PNGs must equal the one-thread path's."""
    from pipelines.common import per_item

    images = [rgb(skdata.astronaut()), rgb(skdata.coffee()), rgb(skdata.chelsea()), rgb(skdata.rocket())]
    modes = ["full-pose", "body-pose", "face-hand-mask", "hand-pose"]
    concurrent, ctx = run_items(tiny, images, modes)
    monkeypatch.setattr(per_item, "finish_threads", lambda: 1)
    sequential, seq_ctx = run_items(tiny, images, modes)
    assert [o.image.url for o in concurrent] == [o.image.url for o in sequential]
    assert sorted(ctx.logs) == sorted(seq_ctx.logs) and ctx.steps == seq_ctx.steps


def test_tiny_models_have_the_real_signatures(tiny, reference_dir):
    import json

    io_json = json.loads((reference_dir / "dwpose" / "io.json").read_text())["models"]
    det, est = tiny.det_model.session, tiny.pose_model.session
    real_det, real_pose = io_json["yolox_l.onnx"], io_json["dw-ll_ucoco_384.onnx"]
    assert [i.name for i in det.get_inputs()] == [real_det["inputs"][0]["name"]]
    assert det.get_inputs()[0].shape[1:] == real_det["inputs"][0]["shape"][1:]
    assert [o.name for o in det.get_outputs()] == [real_det["outputs"][0]["name"]]
    assert det.get_outputs()[0].shape[1:] == real_det["outputs"][0]["shape"][1:]
    assert [i.name for i in est.get_inputs()] == [real_pose["inputs"][0]["name"]]
    assert est.get_inputs()[0].shape == real_pose["inputs"][0]["shape"]
    assert [(o.name, o.shape) for o in est.get_outputs()] == [(o["name"], o["shape"]) for o in real_pose["outputs"]]


# -- the whole path on the reference stand-ins, loaded as "real" weights from a weights dir --------------


@pytest.fixture(scope="module")
def standin_weights(reference_dir, tmp_path_factory):
    """A weights dir holding the reference stand-in ONNX files under the real names, taken in as a user would
    take in files that differ from the manifest: ``weights import --accept-mismatch``."""
    from weights.download import import_dir

    ref = reference_dir / "dwpose"
    source = tmp_path_factory.mktemp("standins")
    for entry, standin in zip(
        weights.manifest("dwpose"), ["tiny_standin_yolox_l.onnx", "tiny_standin_dw-ll_ucoco_384.onnx"], strict=True
    ):
        (source / entry.filename).symlink_to(ref / standin)
    root = tmp_path_factory.mktemp("weights")
    report = import_dir(source, ["dwpose"], root=root, accept_mismatch=True, say=lambda _: None)
    assert report.ok and len(report.done) == 2, report
    return root


@pytest.fixture(scope="module")
def golden(reference_dir):
    from safetensors.numpy import load_file

    return load_file(reference_dir / "dwpose" / "postprocess_golden.safetensors")


def test_real_weights_missing_names_the_pull_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(weights.MissingWeights, match=r"fal-onprem weights pull .*dwpose"):
        DWPosePipeline.load(WeightSource.real(tmp_path))


@pytest.mark.reference
@pytest.mark.parametrize(
    ("mode", "key"), [("body-pose", "s7.canvas_body_uint8"), ("full-pose", "s7.canvas_full_uint8")]
)
def test_standins_through_the_pipeline_reproduce_fals_canvas(standin_weights, golden, mode, key):
    pipe = DWPosePipeline.load(WeightSource.real(standin_weights))
    assert pipe.det_model.fixed_batch == 1  # the stock YOLOX export: static batch, run per image
    (out,), _ = run_items(pipe, [Image.fromarray(golden["in.image_rgb_uint8"])], [mode])
    np.testing.assert_array_equal(np.asarray(decode_data_uri(out.image.url)), golden[key])


@pytest.mark.reference
def test_standins_batched_with_static_detector(standin_weights, golden, monkeypatch):
    pipe = DWPosePipeline.load(WeightSource.real(standin_weights))
    det_spy = CountingRun(pipe.det_model.session)
    pose_spy = CountingRun(pipe.pose_model.session)
    monkeypatch.setattr(pipe.det_model.session, "run", det_spy)
    monkeypatch.setattr(pipe.pose_model.session, "run", pose_spy)
    image = Image.fromarray(golden["in.image_rgb_uint8"])
    outputs, _ = run_items(pipe, [image] * 3, ["body-pose", "full-pose", "body-pose"])
    assert det_spy.batches == [1, 1, 1] and pose_spy.batches == [3]
    expected = [golden["s7.canvas_body_uint8"], golden["s7.canvas_full_uint8"], golden["s7.canvas_body_uint8"]]
    for out, want in zip(outputs, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(decode_data_uri(out.image.url)), want)


def test_cuda_request_without_cuda_provider_falls_back_to_cpu(monkeypatch):
    import onnxruntime as ort

    from pipelines.dwpose import runtime

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert runtime.providers_for("cuda:0") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    (cuda, options), cpu = runtime.providers_for("cuda:1")
    assert (cuda, options["device_id"], cpu) == ("CUDAExecutionProvider", 1, "CPUExecutionProvider")
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert runtime.providers_for("cpu") == ["CPUExecutionProvider"]


def test_one_items_failure_after_the_networks_fails_only_that_item(tiny):
    from pipelines.contract import ItemError

    images = [rgb(skdata.astronaut()), rgb(skdata.coffee()), rgb(skdata.chelsea())]
    modes = ["body-pose", "full-pose", "face-hand-mask"]
    prepared = [
        tiny.prepare(DWPoseInput(image_url=f"https://x/{i}.png", draw_mode=mode), lambda url, loc, img=img: img)
        for i, (img, mode) in enumerate(zip(images, modes, strict=True))
    ]
    ctx = FailingSaveContext(failing_item=1)
    outputs = tiny.run(prepared, ctx)
    assert isinstance(outputs[1], ItemError)
    assert (outputs[1].status_code, outputs[1].error_type) == (500, "internal_server_error")
    assert "disk full" in outputs[1].detail
    assert ctx.steps[-1] == (3, 3)
    for i in (0, 2):
        (single,), _ = run_items(tiny, [images[i]], [modes[i]])
        assert isinstance(outputs[i], DWPoseOutput)
        np.testing.assert_array_equal(
            np.asarray(decode_data_uri(outputs[i].image.url)), np.asarray(decode_data_uri(single.image.url))
        )
