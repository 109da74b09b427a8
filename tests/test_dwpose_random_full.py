"""random_full DWPose: the PyTorch rebuilds of YOLOX-L and DWPose-l have the real files' size and signature."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import weights  # noqa: E402
from pipelines.dwpose.random_full import DWPoseL, YoloxL  # noqa: E402

REAL_SIZES = {f.key: f.size for f in weights.manifest("dwpose")}


def exported_param_bytes(module_cls) -> int:
    """fp32 bytes of the module once BatchNorm is folded into the convs (as the ONNX exports store it)."""
    with torch.device("meta"):
        module = module_cls()
    params = sum(p.numel() for p in module.parameters())
    folded = sum(m.num_features for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    return 4 * (params - folded)


@pytest.mark.parametrize(("module_cls", "key"), [(YoloxL, "yolox_l"), (DWPoseL, "dw-ll_ucoco_384")])
def test_parameter_count_matches_the_real_onnx_file(module_cls, key):
    size = exported_param_bytes(module_cls)
    # the files hold the folded weights plus a few tens of kB of graph (names, shapes)
    assert 0 < REAL_SIZES[key] - size < 100_000, (key, REAL_SIZES[key], size)


def test_yolox_l_has_the_published_parameter_count():
    with torch.device("meta"):
        module = YoloxL()
    assert round(sum(p.numel() for p in module.parameters()) / 1e6, 1) == 54.2  # Megvii's model zoo


@pytest.mark.slow
def test_random_full_exports_and_runs(tmp_path, monkeypatch, reference_dir):
    import json

    import onnx
    from PIL import Image
    from skimage.data import astronaut

    from pipelines.contract import WeightSource
    from pipelines.dwpose.pipeline import DWPosePipeline
    from pipelines.dwpose.schema import DWPoseInput
    from tests.support.fake_ctx import FakeContext

    monkeypatch.setenv("FAL_ONPREM_CACHE", str(tmp_path))
    pipe = DWPosePipeline.load(WeightSource.random_full(seed=0))
    files = {p.name.split("-v")[0]: p for p in (tmp_path / "dwpose-random-full").glob("*.onnx")}
    assert set(files) == {"yolox_l", "dw-ll_ucoco_384"}
    for key, path in files.items():
        assert abs(path.stat().st_size - REAL_SIZES[key]) / REAL_SIZES[key] < 1e-3

    io_json = json.loads((reference_dir / "dwpose" / "io.json").read_text())["models"]
    for session, real in (
        (pipe.det_model.session, io_json["yolox_l.onnx"]),
        (pipe.pose_model.session, io_json["dw-ll_ucoco_384.onnx"]),
    ):
        assert [(i.name, i.shape) for i in session.get_inputs()] == [(i["name"], i["shape"]) for i in real["inputs"]]
        assert [(o.name, o.shape) for o in session.get_outputs()] == [(o["name"], o["shape"]) for o in real["outputs"]]
    onnx.checker.check_model(str(files["dw-ll_ucoco_384"]))

    simcc_x, simcc_y = pipe.pose_model(np.zeros((2, 3, 384, 288), np.float32))
    assert simcc_x.shape == (2, 133, 576) and simcc_y.shape == (2, 133, 768)
    image = Image.fromarray(astronaut())
    prepared = pipe.prepare(DWPoseInput(image_url="x"), lambda url, loc: image)
    (out,) = pipe.run([prepared], FakeContext())
    assert (out.image.width, out.image.height) == (512, 512)
    # cached: a second load reads the files instead of exporting again
    before = {p: p.stat().st_mtime_ns for p in files.values()}
    DWPosePipeline.load(WeightSource.random_full(seed=0))
    assert {p: p.stat().st_mtime_ns for p in files.values()} == before
