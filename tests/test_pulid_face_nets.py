"""Our ports of facexlib's RetinaFace-R50 and BiSeNet: sizes of the real checkpoints, the prior boxes and
decoding, strict loading of ``module.``-prefixed checkpoints, and the detection post-processing contract.
(Forward passes and ``detect`` were compared with facexlib's own classes on random weights: identical.)"""

from __future__ import annotations

import numpy as np
import torch
import torchvision

import weights
from pipelines.pulid.face_nets import BiSeNet, RetinaFaceR50, decode_boxes, decode_landmarks, prior_boxes
from pipelines.pulid.faces import RetinaFaceLandmarker, bisenet


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sizes_match_the_checkpoints_in_the_manifest() -> None:
    files = {f.key: f for f in weights.manifest("pulid")}
    with torch.device("meta"):
        retina, parser = RetinaFaceR50(), BiSeNet()
    assert abs(params(retina) - files["facexlib_retinaface"].params) / files["facexlib_retinaface"].params < 1e-3
    assert abs(params(parser) - files["facexlib_bisenet"].params) / files["facexlib_bisenet"].params < 1e-3


def test_prior_boxes_and_decoding() -> None:
    priors = prior_boxes(64, 96)
    assert priors.shape == ((8 * 12 + 4 * 6 + 2 * 3) * 2, 4)
    torch.testing.assert_close(priors[0], torch.tensor([4 / 96, 4 / 64, 16 / 96, 16 / 64]))
    torch.testing.assert_close(priors[1], torch.tensor([4 / 96, 4 / 64, 32 / 96, 32 / 64]))
    boxes = decode_boxes(torch.zeros(len(priors), 4), priors)  # zero offsets: the anchors themselves
    torch.testing.assert_close(boxes[:, :2], priors[:, :2] - priors[:, 2:] / 2)
    torch.testing.assert_close(boxes[:, 2:], priors[:, :2] + priors[:, 2:] / 2)
    points = decode_landmarks(torch.zeros(len(priors), 10), priors)
    torch.testing.assert_close(points[:, 8:], priors[:, :2])


@torch.no_grad()
def test_retinaface_loads_strictly_and_detects_best_first_after_nms() -> None:
    torch.manual_seed(0)
    model = RetinaFaceR50()
    for head in model.BboxHead:  # boxes = the anchors (random box regressions overflow exp)
        head.conv1x1.weight.zero_()
        head.conv1x1.bias.zero_()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # as the .pth stores it
    landmarker = RetinaFaceLandmarker.from_state(state)
    img_bgr = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    dets = landmarker.model.detect(img_bgr, conf=0.0, nms=0.4)
    assert dets.shape[1] == 15 and len(dets) > 1
    assert np.all(np.diff(dets[:, 4]) <= 0)
    iou = torchvision.ops.box_iou(torch.from_numpy(dets[:, :4]), torch.from_numpy(dets[:, :4]))
    assert (iou.fill_diagonal_(0) <= 0.4 + 1e-6).all()
    priors = prior_boxes(96, 128)
    anchors = decode_boxes(torch.zeros(len(priors), 4), priors) * torch.tensor([128, 96, 128, 96])
    assert any(np.allclose(dets[0, :4], a, atol=1e-3) for a in anchors.numpy())
    boxes, points = landmarker.detect(img_bgr[..., ::-1])
    assert boxes.shape[1:] == (4,) and points.shape[1:] == (5, 2)  # at 0.97 a random model may find none


@torch.no_grad()
def test_bisenet_loads_strictly_and_parses_at_input_size() -> None:
    parser = bisenet(BiSeNet().state_dict())
    out = parser(torch.randn(1, 3, 64, 64))
    assert len(out) == 3 and all(o.shape == (1, 19, 64, 64) for o in out)
