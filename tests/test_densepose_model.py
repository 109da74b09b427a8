"""DensePose model structure, checkpoint conversion and loading, and batching."""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.common.densepose.config import REAL_CONFIG, TINY_CONFIG
from pipelines.common.densepose.convert import NON_PERSISTENT_KEYS, read_model_zoo_pickle
from pipelines.common.densepose.model import DensePoseRCNN
from pipelines.common.densepose.predictor import DensePose, catvton_map_from_result, leffa_iuv_from_result
from pipelines.contract import WeightSource
from weights.convert import run_conversion


def meta_state_shapes(cfg) -> dict[str, list[int]]:
    with torch.device("meta"):
        model = DensePoseRCNN(cfg)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.reference
@pytest.mark.parametrize("consumer", ["catvton", "leffa"])
def test_full_model_matches_the_checkpoint_manifest(reference_dir, consumer):
    manifest = json.loads((reference_dir / consumer / "densepose_rcnn_R_50_FPN_s1x.manifest.json").read_text())
    expected = manifest["state_dict"]
    ours = meta_state_shapes(REAL_CONFIG)
    assert sorted(ours) == sorted(expected)
    assert ours == expected
    assert sum(int(np.prod(s)) for s in ours.values()) == manifest["header"]["num_params_incl_frozenbn_buffers"]
    assert not NON_PERSISTENT_KEYS & expected.keys(), "the converter must not drop a tensor the model needs"


def test_tiny_model_has_the_same_keys_with_smaller_shapes():
    tiny, full = meta_state_shapes(TINY_CONFIG), meta_state_shapes(REAL_CONFIG)
    assert tiny.keys() == full.keys() and len(tiny) == 335
    assert sum(int(np.prod(s)) for s in tiny.values()) == 1_654_738  # the thin fixture's value count


def _model_zoo_pickle(path, tensors: dict[str, np.ndarray]) -> None:
    """The layout of detectron2's model-zoo files (protocol 2 as in the 2020 originals)."""
    with open(path, "wb") as f:
        pickle.dump({"model": OrderedDict(tensors), "__author__": "test"}, f, protocol=2)


def test_conversion_roundtrip_and_real_loading(tmp_path, monkeypatch):
    """.pkl (model-zoo layout) -> ``weights.convert`` -> ``WeightSource.real`` loads it strictly by name.

    The real source builds the full config; here it is pointed at the tiny one to keep the files small
    (the full-size keys and shapes are checked against the manifest above).
    """
    from pipelines.common.densepose import loading

    monkeypatch.delenv("FAL_ONPREM_MANIFEST_DIR", raising=False)
    monkeypatch.setattr(loading, "config_for", lambda source: TINY_CONFIG)
    state = {k: v.numpy() for k, v in DensePose.load(WeightSource.tiny(seed=3)).model.state_dict().items()}
    pkl = tmp_path / "model_final_162be9.pkl"
    _model_zoo_pickle(pkl, state)
    run_conversion("densepose", pkl, tmp_path / "converted" / "densepose" / "model.safetensors")
    loaded = DensePose.load(WeightSource.real(tmp_path)).model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert np.array_equal(loaded[key].numpy(), value), key
    # A checkpoint with a missing tensor does not load.
    del state["roi_heads.densepose_predictor.v_lowres.bias"]
    _model_zoo_pickle(pkl, state)
    run_conversion("densepose", pkl, tmp_path / "converted" / "densepose" / "model.safetensors")
    with pytest.raises(RuntimeError, match=r"v_lowres\.bias"):
        DensePose.load(WeightSource.real(tmp_path))


def test_conversion_drops_known_non_persistent_buffers_only(tmp_path, monkeypatch, caplog):
    """Model-zoo files from older detectron2 hold the RPN cell anchors and pixel mean/std; they are dropped
    (logged) and the rest loads strictly. Any other unknown key still fails the load."""
    import logging

    from pipelines.common.densepose import loading

    monkeypatch.delenv("FAL_ONPREM_MANIFEST_DIR", raising=False)
    monkeypatch.setattr(loading, "config_for", lambda source: TINY_CONFIG)
    state = {k: v.numpy() for k, v in DensePose.load(WeightSource.tiny(seed=4)).model.state_dict().items()}
    assert not NON_PERSISTENT_KEYS & state.keys()
    extra = {f"proposal_generator.anchor_generator.cell_anchors.{i}": np.ones((3, 4), np.float32) for i in range(5)}
    extra |= {
        "pixel_mean": np.array([103.53, 116.28, 123.675], np.float32).reshape(3, 1, 1),
        "pixel_std": np.ones((3, 1, 1), np.float32),
    }
    pkl = tmp_path / "model_final_162be9.pkl"
    _model_zoo_pickle(pkl, state | extra)
    with caplog.at_level(logging.INFO, logger="pipelines.common.densepose.convert"):
        run_conversion("densepose", pkl, tmp_path / "converted" / "densepose" / "model.safetensors")
    dropped_logs = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "dropping" in r.msg]
    assert len(dropped_logs) == len(extra) and all(any(key in m for m in dropped_logs) for key in extra)
    loaded = DensePose.load(WeightSource.real(tmp_path)).model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert np.array_equal(loaded[key].numpy(), value), key

    _model_zoo_pickle(pkl, state | {"roi_heads.box_head.fc3.weight": np.ones((2, 2), np.float32)})
    run_conversion("densepose", pkl, tmp_path / "converted" / "densepose" / "model.safetensors")
    with pytest.raises(RuntimeError, match=r"Unexpected key.*fc3\.weight"):
        DensePose.load(WeightSource.real(tmp_path))


def test_conversion_refuses_foreign_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "bad.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"model": {"x": Evil()}}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        read_model_zoo_pickle(bad)


def test_missing_real_weights_name_the_command(tmp_path, monkeypatch):
    from weights import MissingWeights

    monkeypatch.delenv("FAL_ONPREM_MANIFEST_DIR", raising=False)
    with pytest.raises(MissingWeights, match="densepose"):
        DensePose.load(WeightSource.real(tmp_path))


@pytest.mark.reference
def test_batched_equals_single(reference_dir):
    """Same-size images share a batch, another size runs apart; every result equals its single run."""
    dp = DensePose.load(WeightSource.tiny())
    inputs = reference_dir / "densepose" / "inputs"
    a = np.asarray(Image.open(inputs / "leffa_canvas_768x1024.png").convert("RGB"))
    b = np.asarray(Image.open(inputs / "catvton_canvas_768x1024.png").convert("RGB"))
    c = np.ascontiguousarray(b[100:700, 50:550])
    images = [a, b, c]
    batch = dp.predict(images, 0.5, max_instances=1)
    for image, together in zip(images, batch, strict=True):
        alone = dp.predict([image], 0.5, max_instances=1)[0]
        assert len(together) == len(alone) == 1
        torch.testing.assert_close(together.boxes, alone.boxes, atol=0.01, rtol=0)
        torch.testing.assert_close(together.scores, alone.scores, atol=1e-5, rtol=0)
        for name in ("coarse_segm", "fine_segm", "u", "v"):
            ours, ref = getattr(together.chart, name), getattr(alone.chart, name)
            assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-6, name
        # The products of instance 0 agree too (labels may only flip where logits nearly tie).
        h, w = image.shape[:2]
        map_together = np.asarray(catvton_map_from_result(together, (w, h)))
        map_alone = np.asarray(catvton_map_from_result(alone, (w, h)))
        assert map_alone.max() > 0 and (map_together != map_alone).mean() < 1e-3
        iuv_together, iuv_alone = leffa_iuv_from_result(together), leffa_iuv_from_result(alone)
        assert (iuv_together[..., 2] != iuv_alone[..., 2]).mean() < 1e-3
