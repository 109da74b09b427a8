"""DensePose R-50-FPN (``densepose_rcnn_R_50_FPN_s1x``) as one module tree with detectron2's names.

Why our own module tree and not torchvision's ``FasterRCNN`` + the key map: detectron2's names load
``model_final_162be9.pkl`` with strict key matching and no transforms, while torchvision's detector
needs a remap, reordered ``cls_score`` rows, padded ``bbox_pred`` rows, swapped strides and a bypassed
``GeneralizedRCNNTransform`` (it resizes with torch on floats and rounds anchors / infers strides
differently; see the spec §5). Every stage here can be compared 1:1 with the detectron2 goldens, and
the DensePose branch has to be hand-written either way. The heavy ops are still torchvision's
(``roi_align``, ``batched_nms``) and torch's convolutions.

State-dict keys equal the checkpoint's 335 tensors (FrozenBN statistics are persistent buffers;
pixel mean and anchors are computed, not stored).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import FPN
from .config import DensePoseConfig
from .densepose_head import ChartOutput, Decoder, DensePoseHead, DensePosePredictor, densepose_roi_align
from .detector import (
    RPN,
    BoxHead,
    BoxPredictor,
    Detections,
    Proposals,
    box_inference,
    multilevel_roi_align,
    pooler_boxes,
)

BOX_POOLER_RESOLUTION = 7


class ROIHeads(nn.Module):
    """``roi_heads``: the box head and predictor plus the DensePose decoder, head and predictor."""

    def __init__(self, cfg: DensePoseConfig) -> None:
        super().__init__()
        self.box_head = BoxHead(cfg.fpn_channels * BOX_POOLER_RESOLUTION**2, cfg.box_fc_dim)
        self.box_predictor = BoxPredictor(cfg.box_fc_dim)
        self.decoder = Decoder(cfg.fpn_channels, cfg.decoder_conv_dims, cfg.decoder_out_channels)
        self.densepose_head = DensePoseHead(cfg.decoder_out_channels, cfg.head_conv_dim)
        self.densepose_predictor = DensePosePredictor(cfg.head_conv_dim)


class DensePoseRCNN(nn.Module):
    def __init__(self, cfg: DensePoseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = FPN(cfg)
        self.proposal_generator = RPN(cfg.fpn_channels)
        self.roi_heads = ROIHeads(cfg)

    # -- stages (each usable on its own; the stage tests call them with stored inputs) --

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """FPN p2..p6 of a normalized, padded batch (N, 3, H, W)."""
        return self.backbone(images)

    def propose(self, features: dict[str, torch.Tensor], image_sizes: list[tuple[int, int]]) -> list[Proposals]:
        return self.proposal_generator(list(features.values()), image_sizes)

    def box_outputs(
        self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Box-head features, class logits (person, background) and deltas for the given boxes."""
        pooled = multilevel_roi_align([features[k] for k in ("p2", "p3", "p4", "p5")], boxes)
        head = self.roi_heads.box_head(pooled)
        logits, deltas = self.roi_heads.box_predictor(head)
        return head, logits, deltas

    def detect(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[Proposals],
        image_sizes: list[tuple[int, int]],
        score_thresh: float,
    ) -> list[Detections]:
        boxes = [p.boxes for p in proposals]
        _, logits, deltas = self.box_outputs(features, boxes)
        return box_inference(logits, deltas, boxes, image_sizes, score_thresh)

    def decode(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The DensePose decoder's stride-4 map."""
        return self.roi_heads.decoder([features[k] for k in ("p2", "p3", "p4", "p5")])

    def chart(self, decoder_out: torch.Tensor, boxes: list[torch.Tensor]) -> ChartOutput:
        """Predictor outputs for all boxes of all images, concatenated in image order."""
        pooled = densepose_roi_align(decoder_out, pooler_boxes(boxes))
        out = self.roi_heads.densepose_predictor(self.roi_heads.densepose_head(pooled))
        return ChartOutput(*(t.float() for t in (out.coarse_segm, out.fine_segm, out.u, out.v)))
