"""End to end on the golden canvases: the CatVTON part map and the Leffa IUV image, thin and full configs.

The detector's boxes are arbitrary with random weights, so (as the goldens do) the three fixed boxes are
injected in the network-input frame. Products must match exactly outside the README's ambiguity mask
(Leffa U/V within ±1 there: uint8 truncation after the min-max scaling).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from pipelines.common.densepose.densepose_head import densepose_roi_align
from pipelines.common.densepose.detector import Proposals
from pipelines.common.densepose.model import DensePoseRCNN
from pipelines.common.densepose.predictor import (
    DensePose,
    DensePoseResult,
    catvton_map_from_result,
    leffa_iuv_from_result,
)
from pipelines.common.densepose.preprocess import postprocess_boxes, to_network_input
from pipelines.common.densepose.products import int_box, leffa_condition
from pipelines.contract import WeightSource
from tests.support.densepose import LEVELS, Chain, assert_box_sets_match, close

pytestmark = pytest.mark.reference


def check_leffa_iuv(iuv: np.ndarray, chain: Chain) -> None:
    ref = chain.png("leffa_iuv.png")
    assert iuv.shape == ref.shape == (1024, 768, 3) and iuv.dtype == np.uint8
    outside = ~chain.ambiguous()
    diff = np.abs(iuv.astype(int) - ref.astype(int))[outside]
    assert diff[:, 2].max() == 0, "I must match exactly outside the ambiguity mask"
    assert diff[:, :2].max() <= 1, "U/V within ±1 outside the ambiguity mask"
    # ±1 flips are values within float noise (~1e-6) of a uint8 truncation boundary: the README's reruns of
    # the original flipped 3-22 pixels; other CPUs / thread counts flip ~80 here (of 783k). A real error
    # (a wrong channel, scale or box) moves far more than 0.02% of them.
    assert (diff[:, :2] > 0).sum() <= 2e-4 * len(diff)
    # The UNet condition: Leffa's transform maps each pixel value v to lut[v].
    lut = chain["f.leffa_transform_lut"]
    cond = leffa_condition(iuv)
    assert cond.shape == (1, 3, 1024, 768)
    assert torch.equal(cond[0].permute(1, 2, 0), lut[torch.from_numpy(iuv).long()])


def check_catvton_map(part_map: np.ndarray, chain: Chain) -> None:
    ref = chain.png("catvton_densepose.png")
    assert part_map.shape == ref.shape == (1024, 768) and part_map.dtype == np.uint8
    outside = ~chain.ambiguous()
    assert np.array_equal(part_map[outside], ref[outside])
    assert ref.max() > 0 and part_map.max() <= 24


@pytest.fixture(scope="module")
def tiny() -> DensePose:
    return DensePose.load(WeightSource.tiny())


@pytest.mark.parametrize("consumer", ["leffa", "catvton"])
def test_thin_chain_end_to_end(tiny, reference_dir, consumer):
    chain = Chain(reference_dir, "thin", consumer)
    canvas = chain.canvas()
    boxes = chain.fixed_boxes()
    result = tiny.predict([chain.network_order_canvas()], 0.5, [boxes])[0]
    n = chain["e.coarse_segm"].shape[0]
    for name in ("coarse_segm", "fine_segm", "u", "v"):
        if f"e.{name}" in chain:
            close(getattr(result.chart, name)[:n], chain[f"e.{name}"], name)
    close(result.boxes, chain["d.fixed_boxes_canvas_frame"], "boxes, canvas frame")
    if consumer == "leffa":
        xywh = result.boxes.clone()
        xywh[:, 2:] -= xywh[:, :2]
        close(xywh, chain["f.leffa_boxes_xywh_post"], "XYWH after postprocess")
        labels, _ = result.labels_uv(0)
        ref_labels = chain.png("labels_box0.png")
        x, y, w, h = int_box(result.boxes[0])
        assert (w, h) == (537, 749) and labels.shape == ref_labels.shape
        outside = ~chain.ambiguous()[y : y + h, x : x + w]
        assert np.array_equal(labels.numpy()[outside], ref_labels[outside])
        check_leffa_iuv(tiny.leffa_iuv([np.asarray(canvas)], [boxes])[0], chain)
    else:
        check_catvton_map(np.asarray(tiny.catvton_part_maps([canvas], 1024, [boxes])[0]), chain)


# -- full size (the real config with the recipe's random weights) --


@pytest.fixture(scope="module")
def full_model(reference_dir) -> DensePoseRCNN:
    import json

    model = DensePose.load(WeightSource.random_full()).model
    sums = json.loads((reference_dir / "densepose/full/weights_checksums.json").read_text())
    state = model.state_dict()
    combined = hashlib.sha256()
    for key in sorted(state):
        digest = hashlib.sha256(state[key].numpy().astype("<f4").tobytes()).hexdigest()
        combined.update((key + digest).encode())
    assert combined.hexdigest() == sums["combined_sha256"]
    return model


def _full_images_tensor(chain: Chain) -> torch.Tensor:
    return to_network_input([chain.png("net_input_resized.png")], "cpu", torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("consumer", ["leffa", "catvton"])
@torch.no_grad()
def test_full_chain(full_model, reference_dir, consumer):
    chain = Chain(reference_dir, "full", consumer)
    resized_hw = (1067, 800)
    feats = full_model.features(_full_images_tensor(chain))
    for level in LEVELS:
        close(feats[level].mean(dim=(0, 2, 3)), chain[f"b.{level}.channel_mean"], f"{level} mean")
        if f"b.{level}.ch0_4" in chain:
            close(feats[level][:, :4], chain[f"b.{level}.ch0_4"], f"{level} ch0_4")
    props = full_model.propose(feats, [resized_hw])[0]
    assert_box_sets_match(
        props.boxes,
        props.objectness_logits,
        chain["c.proposals.boxes"],
        chain["c.proposals.objectness_logits"],
        0.05,
        1e-3,
        0.99,
    )
    ref_props = Proposals(chain["c.proposals.boxes"], chain["c.proposals.objectness_logits"])
    det = full_model.detect(feats, [ref_props], [resized_hw], score_thresh=0.0)[0]
    assert len(det.boxes) == 100
    assert_box_sets_match(
        det.boxes, det.scores, chain["c.e2e_thresh0.boxes"], chain["c.e2e_thresh0.scores"], 0.017, 6e-5
    )
    boxes = chain["d.fixed_boxes_input_frame"]
    head, logits, deltas = full_model.box_outputs(feats, [boxes])
    close(head, chain["d.box_head_out"], "box head")
    close(logits, chain["d.cls_logits"], "cls logits")
    close(deltas, chain["d.bbox_deltas"], "bbox deltas")

    decoded = full_model.decode(feats)
    close(decoded.mean(dim=(0, 2, 3)), chain["e.decoder_out.channel_mean"], "decoder mean")
    if "e.decoder_out.ch0_4" in chain:
        close(decoded[:, :4], chain["e.decoder_out.ch0_4"], "decoder ch0_4")
        pooled = densepose_roi_align(decoded, torch.cat([torch.zeros(1, 1), boxes[:1]], dim=1))
        close(pooled, chain["e.dp_pooler_out.box0"], "dp pooler box0")
    chart = full_model.chart(decoded, [boxes])
    for name in ("coarse_segm", "fine_segm", "u", "v"):
        if f"e.{name}" in chain:
            close(getattr(chart, name)[:1], chain[f"e.{name}"], name)

    # The products, through the same glue as DensePose.predict.
    canvas_boxes, keep = postprocess_boxes(boxes, resized_hw, (1024, 768))
    assert bool(keep.all())
    result = DensePoseResult((1024, 768), canvas_boxes, torch.ones(3), chart)
    if consumer == "leffa":
        check_leffa_iuv(leffa_iuv_from_result(result), chain)
    else:
        check_catvton_map(np.asarray(catvton_map_from_result(result, (768, 1024))), chain)


@pytest.mark.slow
@pytest.mark.parametrize("consumer", ["leffa", "catvton"])
def test_full_public_path_on_the_canvas(full_model, reference_dir, consumer):
    """``leffa_iuv`` / ``catvton_part_maps`` (what the pipelines call) on the golden canvas, full-size model."""
    chain = Chain(reference_dir, "full", consumer)
    dp = DensePose(full_model)
    canvas, boxes = chain.canvas(), chain.fixed_boxes()
    if consumer == "leffa":
        check_leffa_iuv(dp.leffa_iuv([np.asarray(canvas)], [boxes])[0], chain)
    else:
        check_catvton_map(np.asarray(dp.catvton_part_maps([canvas], 1024, [boxes])[0]), chain)


def test_leffa_condition_matches_the_leffa_golden(reference_dir):
    """The Leffa fixture's IUV image through ``leffa_condition`` equals the original transform's tensor."""
    from PIL import Image
    from safetensors.torch import load_file

    golden = load_file(str(reference_dir / "leffa/fixtures/golden/golden.safetensors"))
    iuv = np.asarray(Image.open(reference_dir / "leffa/fixtures/inputs/densepose_iuv_192x256.png"))
    assert torch.equal(leffa_condition(iuv), golden["pre.densepose"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["thin", "full"])
def test_end_to_end_detection_at_the_leffa_threshold(reference_dir, variant, tiny, full_model):
    """The whole predict path (resize, detector, postprocess) on the Leffa canvas at threshold 0.5."""
    import json

    chain = Chain(reference_dir, variant, "leffa")
    meta = json.loads((chain.dir / "meta.json").read_text())["e2e_detections_at_consumer_thresh"]
    dp = tiny if variant == "thin" else DensePose(full_model)
    result = dp.predict([chain.network_order_canvas()], 0.5)[0]
    assert len(result) == meta["count"]
    top = torch.tensor(meta["top_scores"])
    torch.testing.assert_close(result.scores[: len(top)], top, atol=6e-5, rtol=0)
    if variant == "full":  # well-separated scores: the top box is the reference's, in the canvas frame
        ref_boxes, ref_scores = chain["c.e2e_thresh0.boxes"], chain["c.e2e_thresh0.scores"]
        scale = torch.tensor([768 / 800, 1024 / 1067, 768 / 800, 1024 / 1067])
        torch.testing.assert_close(result.boxes[0], ref_boxes[ref_scores.argmax()] * scale, atol=0.05, rtol=0)
