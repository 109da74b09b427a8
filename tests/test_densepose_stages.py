"""DensePose R-50-FPN vs the detectron2 goldens (shared/reference/densepose), thin config, stage by stage.

Each stage gets the stored input of the previous stage, so a divergence is localised. Tolerances are
the README's: floats within 1e-4·max|ref| + 1e-6, proposals/detections compared as sets.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.common.densepose.config import ROI_BOX_WEIGHTS, TINY_CONFIG
from pipelines.common.densepose.densepose_head import densepose_roi_align
from pipelines.common.densepose.detector import Proposals, apply_deltas, multilevel_roi_align, pooler_boxes
from pipelines.common.densepose.loading import build_model
from pipelines.common.densepose.preprocess import resize_for_network, to_network_input
from pipelines.contract import WeightSource
from tests.support.densepose import LEVELS, Chain, assert_box_sets_match, close

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def model():
    return build_model(WeightSource.tiny())


@pytest.fixture(scope="module", params=["leffa", "catvton"])
def chain(request, reference_dir) -> Chain:
    return Chain(reference_dir, "thin", request.param)


def test_tiny_weights_are_the_thin_fixture_weights(model, reference_dir):
    from safetensors.torch import load_file

    ref = load_file(str(reference_dir / "densepose/thin/weights.safetensors"))
    ours = model.state_dict()
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        assert torch.equal(ours[key], value), key


def test_network_input(chain):
    resized = resize_for_network(chain.network_order_canvas(), TINY_CONFIG.min_size_test)
    assert np.array_equal(resized, chain.png("net_input_resized.png"))
    assert torch.equal(to_network_input([resized], "cpu", torch.float32), chain["a.images_tensor"])


@torch.no_grad()
def test_backbone(model, chain):
    feats = model.features(chain["a.images_tensor"])
    for level in LEVELS:
        close(feats[level].mean(dim=(0, 2, 3)), chain[f"b.{level}.channel_mean"], f"{level} channel mean")
        if f"b.{level}" in chain:
            close(feats[level], chain[f"b.{level}"], level)


@torch.no_grad()
def test_rpn_head_and_anchors(model, reference_dir):
    chain = Chain(reference_dir, "thin", "leffa")
    feats = [chain[f"b.{level}"] for level in LEVELS]
    logits, deltas = model.proposal_generator.rpn_head(feats)
    anchors = model.proposal_generator.anchors(feats)
    for i, level in enumerate(LEVELS):
        close(logits[i][0], chain[f"c.rpn_objectness_logits.{level}"], f"objectness {level}")
        close(deltas[i][0], chain[f"c.rpn_anchor_deltas.{level}"], f"deltas {level}")
        close(anchors[i], chain[f"c.anchors.{level}"], f"anchors {level}")


def _features(model, chain) -> dict[str, torch.Tensor]:
    if "b.p2" in chain:
        return {level: chain[f"b.{level}"] for level in LEVELS}
    return model.features(chain["a.images_tensor"])


@torch.no_grad()
def test_proposals(model, chain):
    feats = _features(model, chain)
    props = model.propose(feats, [(427, 320)])[0]
    ref_boxes, ref_logits = chain["c.proposals.boxes"], chain["c.proposals.objectness_logits"]
    assert abs(len(props.boxes) - len(ref_boxes)) <= 0.01 * len(ref_boxes)
    assert_box_sets_match(props.boxes, props.objectness_logits, ref_boxes, ref_logits, 0.05, 1e-3, 0.99)


@torch.no_grad()
def test_box_head_on_fixed_boxes(model, chain):
    feats = _features(model, chain)
    boxes = chain["d.fixed_boxes_input_frame"]
    if "d.box_pooler_out" in chain:
        pooled = multilevel_roi_align([feats[k] for k in LEVELS[:4]], [boxes])
        close(pooled, chain["d.box_pooler_out"], "box pooler")
    head, logits, deltas = model.box_outputs(feats, [boxes])
    close(head, chain["d.box_head_out"], "box head")
    close(logits, chain["d.cls_logits"], "cls logits")
    close(deltas, chain["d.bbox_deltas"], "bbox deltas")
    close(torch.softmax(logits, dim=-1), chain["d.probs"], "probs")
    close(apply_deltas(deltas, boxes, ROI_BOX_WEIGHTS), chain["d.decoded_boxes"], "decoded boxes")


@torch.no_grad()
def test_box_inference_on_reference_proposals(model, chain):
    feats = _features(model, chain)
    props = Proposals(chain["c.proposals.boxes"], chain["c.proposals.objectness_logits"])
    det = model.detect(feats, [props], [(427, 320)], score_thresh=0.0)[0]
    ref_boxes, ref_scores = chain["c.e2e_thresh0.boxes"], chain["c.e2e_thresh0.scores"]
    assert len(det.boxes) == len(ref_boxes)
    assert_box_sets_match(det.boxes, det.scores, ref_boxes, ref_scores, 0.017, 6e-5)


@torch.no_grad()
def test_densepose_branch(model, reference_dir):
    chain = Chain(reference_dir, "thin", "leffa")
    feats = _features(model, chain)
    close(model.decode(feats), chain["e.decoder_out"], "decoder")
    rois = pooler_boxes([chain["d.fixed_boxes_input_frame"]])
    close(densepose_roi_align(chain["e.decoder_out"], rois), chain["e.dp_pooler_out"], "dp pooler")
    close(model.roi_heads.densepose_head(chain["e.dp_pooler_out"]), chain["e.dp_head_out"], "dp head")
    out = model.roi_heads.densepose_predictor(chain["e.dp_head_out"])
    for name in ("coarse_segm", "fine_segm", "u", "v"):
        close(getattr(out, name), chain[f"e.{name}"], name)
