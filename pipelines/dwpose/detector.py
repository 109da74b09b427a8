"""YOLOX person boxes from the raw ``[8400, 85]`` detector output (Megvii export, decode off).

Columns: ``dx, dy, log w, log h`` in grid units, objectness and 80 class probabilities (both already
sigmoid). Anchors run stride 8 (80x80), 16 (40x40), 32 (20x20), each grid row-major. The float steps
follow fal's code exactly (grid offsets added in float64 and stored back as float32; boxes, scores and
NMS in float32), so the kept boxes match it bit for bit.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .preprocess import DET_INPUT_SIZE

STRIDES = (8, 16, 32)
SCORE_THR = 0.1  # candidates entering NMS
NMS_IOU = 0.45  # a box is kept while its IoU with every better box is <= this
PERSON_SCORE_THR = 0.3  # final filter, class 0 only
PERSON_CLASS = 0


@cache
def anchor_grid(size: int = DET_INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``(grid [A, 2] int64 (x, y), stride [A, 1] int64)`` for all anchors of a ``size`` input."""
    grids, strides = [], []
    for stride in STRIDES:
        n = size // stride
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((n * n, 1), stride))
    return np.concatenate(grids), np.concatenate(strides)


def decode(raw: np.ndarray, ratio: float, classes: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``[A, 85]`` -> (xyxy boxes in the padded image ``[A, 4]`` float32, scores ``[A, C]`` float32).

    ``classes`` selects the class columns scored (all 80 by default); the arithmetic is per element, so a
    subset gives the same values as the full computation.
    """
    grid, stride = anchor_grid()
    if raw.shape != (grid.shape[0], 85):
        raise ValueError(f"detector output has shape {raw.shape}, expected {(grid.shape[0], 85)}")
    pred = np.array(raw[:, :4], dtype=np.float32)
    pred[:, :2] = (pred[:, :2] + grid) * stride
    pred[:, 2:4] = np.exp(pred[:, 2:4]) * stride
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    boxes = np.stack([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], axis=1)
    boxes /= ratio
    return boxes, raw[:, 4:5].astype(np.float32) * raw[:, 5:][:, classes].astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float = NMS_IOU) -> list[int]:
    """Greedy NMS with the legacy +1 pixel area convention; indices best first."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = w * h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_thr]
    return keep


def person_boxes(raw: np.ndarray, ratio: float) -> np.ndarray:
    """Person boxes ``[n, 4]`` (xyxy, padded-image pixels, float64 holding float32 values), best first.

    fal runs class-aware NMS over all 80 classes and then keeps class 0 with score > 0.3. NMS never
    mixes classes, so running it on class 0 alone gives the same boxes in the same order.
    """
    boxes, scores = decode(raw, ratio, slice(PERSON_CLASS, PERSON_CLASS + 1))
    person = scores[:, 0]
    candidates = person > SCORE_THR
    if not candidates.any():
        return np.zeros((0, 4), dtype=np.float64)
    cand_boxes, cand_scores = boxes[candidates], person[candidates]
    keep = nms(cand_boxes, cand_scores)
    kept = cand_scores[keep] > PERSON_SCORE_THR
    return cand_boxes[keep][kept].astype(np.float64)
