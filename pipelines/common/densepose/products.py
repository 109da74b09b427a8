"""What the consumers make of one DensePose instance, with the originals' quirks.

- detectron2 DensePose's chart-result conversion (``ToChartResultConverter``): the 112×112 logits
  are resampled bilinearly (align_corners=False) to the int box ``(int(h), int(w))`` (XYWH floats
  truncated); labels = argmax(fine) × (argmax(coarse) > 0); U and V are taken from the channel of
  each pixel's label (0 where the label is 0).
- CatVTON's part map: the labels of instance 0 pasted at the int box into a zero uint8 map.
- Leffa's IUV (``predict_iuv(...)[:, :, ::-1]`` in app.py): RGB = (U·255, V·255, I), with U and V
  min-max scaled *jointly and including the background zeros*, truncated to uint8.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .densepose_head import ChartOutput


def box_xywh(box_xyxy: torch.Tensor) -> torch.Tensor:
    """XYXY -> XYWH in float32, as detectron2's ``BoxMode.convert`` and the extractors compute it."""
    out = box_xyxy.clone()
    out[..., 2] -= out[..., 0]
    out[..., 3] -= out[..., 1]
    return out


def int_box(box_xyxy: torch.Tensor) -> tuple[int, int, int, int]:
    """``make_int_box``: the XYWH floats truncated (``.long()``)."""
    x, y, w, h = box_xywh(box_xyxy).long().tolist()
    return x, y, w, h


def resample_to_box(chart: ChartOutput, box_xyxy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One instance's chart output -> (labels (h, w) int64, uv (2, h, w) float32) in the box frame."""
    _, _, w, h = int_box(box_xyxy)
    size = (max(h, 1), max(w, 1))
    coarse = F.interpolate(chart.coarse_segm[:1], size, mode="bilinear", align_corners=False).argmax(dim=1)
    fine = F.interpolate(chart.fine_segm[:1], size, mode="bilinear", align_corners=False).argmax(dim=1)
    labels = (fine * (coarse > 0).long())[0]
    u = F.interpolate(chart.u[:1], size, mode="bilinear", align_corners=False)[0]
    v = F.interpolate(chart.v[:1], size, mode="bilinear", align_corners=False)[0]
    # Per-pixel channel = label; label 0 (background) keeps U = V = 0.
    index = labels[None]
    uv = torch.stack((u.gather(0, index)[0], v.gather(0, index)[0]))
    uv = torch.where(labels[None] > 0, uv, torch.zeros_like(uv))
    return labels, uv


def paste(canvas: np.ndarray, patch: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """``canvas[y:y+h, x:x+w] = patch`` exactly as numpy does it (a shape mismatch raises)."""
    x, y, w, h = box
    canvas[y : y + h, x : x + w] = patch


def catvton_part_map(labels: torch.Tensor, box_xyxy: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """Instance-0 labels (0..24) pasted at the int box into an (H, W) uint8 map."""
    result = np.zeros(hw, dtype=np.uint8)
    paste(result, labels.cpu().numpy(), int_box(box_xyxy))
    return result


def leffa_iuv(labels: torch.Tensor, uv: torch.Tensor, box_xyxy: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """Leffa's pose condition as app.py hands it on: (H, W, 3) uint8 RGB = (U, V, I)."""
    uv = (uv - uv.min()) / (uv.max() - uv.min())  # joint min-max, background zeros included
    uv = uv * 255
    iuv = torch.cat([labels[None].float(), uv], dim=0).permute(1, 2, 0).cpu().numpy()
    # uint8 assignment truncates; a constant UV (0/0) would give NaN, which we write as 0.
    iuv = np.nan_to_num(iuv, nan=0.0)
    canvas = np.zeros((*hw, 3), dtype=np.uint8)
    paste(canvas, iuv, int_box(box_xyxy))
    return canvas[:, :, [0, 2, 1]][:, :, ::-1].copy()  # predict_iuv's (I,V,U), then app.py's reverse


def leffa_condition(iuv: np.ndarray) -> torch.Tensor:
    """The tensor Leffa's ``LeffaTransform()`` (try-on mode, as the app builds it) makes of the IUV image:
    ``x / 127.5 - 1`` on all three channels, (1, 3, H, W) float32."""
    return (torch.from_numpy(np.array(iuv, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 127.5) - 1
