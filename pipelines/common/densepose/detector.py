"""The person detector half: RPN and the Fast R-CNN box head, with detectron2's box math.

Anchors use fixed strides (4..64) and unrounded sizes, boxes are decoded with detectron2's
``Box2BoxTransform`` (scale clamp log(1000/16)); NMS, ROIAlign and box ops come from torchvision.
Module names follow detectron2 (``proposal_generator.rpn_head.conv``, ``roi_heads.box_head.fc1``,
``roi_heads.box_predictor.cls_score``) so the checkpoint loads unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from .config import (
    ANCHOR_ASPECT_RATIOS,
    ANCHOR_SIZES,
    BOX_POOLER_RESOLUTION,
    BOX_SCALE_CLAMP,
    CANONICAL_BOX_SIZE,
    CANONICAL_LEVEL,
    DETECTIONS_PER_IMAGE,
    FPN_LEVELS,
    FPN_STRIDES,
    POOLER_SAMPLING_RATIO,
    ROI_BOX_WEIGHTS,
    ROI_LEVELS,
    ROI_NMS_THRESH,
    RPN_BOX_WEIGHTS,
    RPN_NMS_THRESH,
    RPN_POST_NMS_TOPK,
    RPN_PRE_NMS_TOPK,
)


def apply_deltas(deltas: torch.Tensor, boxes: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """detectron2 ``Box2BoxTransform.apply_deltas`` for one box per row, computed in float32."""
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=BOX_SCALE_CLAMP)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=BOX_SCALE_CLAMP)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    x1 = pred_ctr_x - 0.5 * pred_w
    y1 = pred_ctr_y - 0.5 * pred_h
    x2 = pred_ctr_x + 0.5 * pred_w
    y2 = pred_ctr_y + 0.5 * pred_h
    return torch.stack((x1, y1, x2, y2), dim=-1).reshape(deltas.shape)


def clip_boxes(boxes: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    h, w = image_hw
    x1 = boxes[:, 0].clamp(min=0, max=w)
    y1 = boxes[:, 1].clamp(min=0, max=h)
    x2 = boxes[:, 2].clamp(min=0, max=w)
    y2 = boxes[:, 3].clamp(min=0, max=h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def nonempty(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)


def cell_anchors(size: float) -> torch.Tensor:
    """The 3 anchors (one per aspect ratio) of one size, centred at 0, in float64 maths."""
    anchors = []
    for ratio in ANCHOR_ASPECT_RATIOS:
        w = math.sqrt(size**2.0 / ratio)
        h = ratio * w
        anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


def grid_anchors(grid_hw: tuple[int, int], stride: int, size: float, device: torch.device) -> torch.Tensor:
    """All anchors of one level, ordered (y, x, anchor) like detectron2 (offset 0)."""
    gh, gw = grid_hw
    shifts_x = torch.arange(0, gw * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(0, gh * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    base = cell_anchors(size).to(device=device, dtype=torch.float32)
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


class RPNHead(nn.Module):
    def __init__(self, channels: int, num_anchors: int = len(ANCHOR_ASPECT_RATIOS)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


@dataclass
class Proposals:
    boxes: torch.Tensor  # (R, 4) XYXY in the network-input frame
    objectness_logits: torch.Tensor  # (R,)


class RPN(nn.Module):
    """``proposal_generator``: per-level top-k, clip, per-level NMS, global top-k (test settings)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.rpn_head = RPNHead(channels)

    def anchors(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            grid_anchors(tuple(f.shape[-2:]), FPN_STRIDES[level], size, f.device)
            for f, level, size in zip(features, FPN_LEVELS, ANCHOR_SIZES, strict=True)
        ]

    def forward(self, features: list[torch.Tensor], image_sizes: list[tuple[int, int]]) -> list[Proposals]:
        logits, deltas = self.rpn_head(features)
        anchors = self.anchors(features)
        n = features[0].shape[0]
        top_boxes, top_scores, level_ids = [], [], []
        for level, (logit, delta, anchor) in enumerate(zip(logits, deltas, anchors, strict=True)):
            # (N, A, H, W) -> (N, H*W*A); (N, A*4, H, W) -> (N, H*W*A, 4)
            logit = logit.permute(0, 2, 3, 1).flatten(1).float()
            h, w = delta.shape[-2:]
            delta = delta.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).flatten(1, -2)
            boxes = apply_deltas(
                delta.reshape(-1, 4), anchor.unsqueeze(0).expand(n, -1, -1).reshape(-1, 4), RPN_BOX_WEIGHTS
            ).view(n, -1, 4)
            k = min(logit.shape[1], RPN_PRE_NMS_TOPK)
            scores_k, idx = logit.topk(k, dim=1)
            top_scores.append(scores_k)
            top_boxes.append(boxes[torch.arange(n, device=boxes.device)[:, None], idx])
            level_ids.append(torch.full((k,), level, dtype=torch.int64, device=boxes.device))
        all_scores = torch.cat(top_scores, dim=1)
        all_boxes = torch.cat(top_boxes, dim=1)
        all_levels = torch.cat(level_ids)
        results = []
        for i, image_hw in enumerate(image_sizes):
            boxes, scores, lvl = all_boxes[i], all_scores[i], all_levels
            valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not bool(valid.all()):
                boxes, scores, lvl = boxes[valid], scores[valid], lvl[valid]
            boxes = clip_boxes(boxes, image_hw)
            keep = nonempty(boxes)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = batched_nms(boxes, scores, lvl, RPN_NMS_THRESH)[:RPN_POST_NMS_TOPK]
            results.append(Proposals(boxes[keep], scores[keep]))
        return results


def assign_levels(boxes: torch.Tensor) -> torch.Tensor:
    """FPN level index (0 = p2) of each box: floor(4 + log2(sqrt(area)/224)), clamped to p2..p5."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(CANONICAL_LEVEL + torch.log2(sizes / CANONICAL_BOX_SIZE + 1e-8))
    return torch.clamp(levels, min=2, max=5).to(torch.int64) - 2


def pooler_boxes(boxes: list[torch.Tensor]) -> torch.Tensor:
    """Boxes of all images as (M, 5) rows ``(image index, x1, y1, x2, y2)``."""
    return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0)


def roi_align_f32(feature: torch.Tensor, rois: torch.Tensor, size: int, scale: float) -> torch.Tensor:
    """ROIAlign (aligned=False, sampling 2) with float32 box coordinates whatever the feature dtype.

    Half-precision box coordinates would be off by whole pixels at 1000+ px, so reduced-precision
    features are pooled in float32 and cast back.
    """
    if feature.dtype == torch.float32:
        return roi_align(feature, rois.float(), size, scale, POOLER_SAMPLING_RATIO, aligned=False)
    pooled = roi_align(feature.float(), rois.float(), size, scale, POOLER_SAMPLING_RATIO, aligned=False)
    return pooled.to(feature.dtype)


def multilevel_roi_align(features: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
    """detectron2 ``ROIPooler`` (ROIAlign, aligned=False) over p2..p5 for the box head."""
    rois = pooler_boxes(boxes).float()
    levels = assign_levels(torch.cat(boxes))
    out = features[0].new_zeros((rois.shape[0], features[0].shape[1], BOX_POOLER_RESOLUTION, BOX_POOLER_RESOLUTION))
    for level, feature in enumerate(features):
        inds = torch.nonzero(levels == level, as_tuple=True)[0]
        if inds.numel() == 0:
            continue
        scale = 1.0 / FPN_STRIDES[ROI_LEVELS[level]]
        out[inds] = roi_align_f32(feature, rois[inds], BOX_POOLER_RESOLUTION, scale)
    return out


class BoxHead(nn.Module):
    """``FastRCNNConvFCHead`` with two FC layers."""

    def __init__(self, in_features: int, fc_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.flatten(x, start_dim=1)))
        return F.relu(self.fc2(x))


class BoxPredictor(nn.Module):
    """``FastRCNNOutputLayers`` for one class: logits (person, background) and 4 deltas."""

    def __init__(self, fc_dim: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(fc_dim, 2)
        self.bbox_pred = nn.Linear(fc_dim, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


@dataclass
class Detections:
    """Per-image detections in the network-input frame, sorted by score (descending)."""

    boxes: torch.Tensor  # (K, 4) XYXY
    scores: torch.Tensor  # (K,)


def box_inference(
    logits: torch.Tensor,
    deltas: torch.Tensor,
    proposals: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
    score_thresh: float,
) -> list[Detections]:
    """detectron2 ``fast_rcnn_inference``: softmax, decode, clip, threshold, NMS 0.5, top 100."""
    probs = F.softmax(logits.float(), dim=-1)
    decoded = apply_deltas(deltas, torch.cat(proposals), ROI_BOX_WEIGHTS)
    results = []
    start = 0
    for props, image_hw in zip(proposals, image_sizes, strict=True):
        end = start + props.shape[0]
        boxes, scores = decoded[start:end], probs[start:end]
        start = end
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        if not bool(valid.all()):
            boxes, scores = boxes[valid], scores[valid]
        scores = scores[:, 0]  # drop the background column (last)
        boxes = clip_boxes(boxes, image_hw)
        keep = scores > score_thresh
        boxes, scores = boxes[keep], scores[keep]
        keep = batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), ROI_NMS_THRESH)
        keep = keep[:DETECTIONS_PER_IMAGE]
        results.append(Detections(boxes[keep], scores[keep]))
    return results
