"""detectron2 ``DefaultPredictor`` input handling and ``detector_postprocess``, reproduced exactly.

Resize: ``ResizeShortestEdge(short, 1333)`` computes the size in float64 with ``int(x + 0.5)`` and
resizes the uint8 image with PIL bilinear. Normalisation: ``x - PIXEL_MEAN`` (BGR, std 1), then
zero padding bottom/right to a multiple of 32.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .config import MAX_SIZE_TEST, PIXEL_MEAN_BGR, SIZE_DIVISIBILITY


def resized_shape(h: int, w: int, short: int, max_size: int = MAX_SIZE_TEST) -> tuple[int, int]:
    """``ResizeShortestEdge.get_output_shape``: (new_h, new_w)."""
    size = short * 1.0
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_for_network(image: np.ndarray, short: int) -> np.ndarray:
    """HxWx3 uint8 -> resized HxWx3 uint8 (PIL bilinear, as detectron2's ``ResizeTransform``)."""
    h, w = image.shape[:2]
    newh, neww = resized_shape(h, w, short)
    return np.asarray(Image.fromarray(image).resize((neww, newh), Image.Resampling.BILINEAR))


def padded_shape(h: int, w: int) -> tuple[int, int]:
    d = SIZE_DIVISIBILITY
    return (h + d - 1) // d * d, (w + d - 1) // d * d


def to_network_input(resized: list[np.ndarray], device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Resized uint8 images (channel order as the network sees it) -> normalized, padded (N, 3, H, W)."""
    ph = max(padded_shape(*im.shape[:2])[0] for im in resized)
    pw = max(padded_shape(*im.shape[:2])[1] for im in resized)
    mean = torch.tensor(PIXEL_MEAN_BGR, dtype=torch.float32, device=device).view(3, 1, 1)
    batch = torch.zeros((len(resized), 3, ph, pw), dtype=torch.float32, device=device)
    for i, im in enumerate(resized):
        x = torch.as_tensor(np.ascontiguousarray(im.transpose(2, 0, 1)), device=device).float()
        batch[i, :, : im.shape[0], : im.shape[1]] = x - mean
    return batch.to(dtype)


def postprocess_boxes(
    boxes: torch.Tensor, resized_hw: tuple[int, int], output_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``detector_postprocess``: scale input-frame boxes to the original image, clip, keep nonempty.

    Returns the boxes and the boolean mask of kept instances.
    """
    boxes = boxes.clone()
    boxes[:, 0::2] *= output_hw[1] / resized_hw[1]
    boxes[:, 1::2] *= output_hw[0] / resized_hw[0]
    h, w = output_hw
    boxes = torch.stack(
        (
            boxes[:, 0].clamp(min=0, max=w),
            boxes[:, 1].clamp(min=0, max=h),
            boxes[:, 2].clamp(min=0, max=w),
            boxes[:, 3].clamp(min=0, max=h),
        ),
        dim=-1,
    )
    keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    return boxes[keep], keep
