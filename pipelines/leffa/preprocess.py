"""Leffa's input preparation (``leffa_utils.utils.resize_and_center`` + ``LeffaTransform`` in try-on mode)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image


def letterbox(image: Image.Image | np.ndarray, width: int, height: int) -> np.ndarray:
    """``resize_and_center``: fit inside (width, height) with cv2 INTER_CUBIC at ``int(side * scale)``, centred on
    white. Returns (height, width, 3) uint8 RGB."""
    img = np.asarray(image)
    if img.ndim == 2 or img.shape[-1] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[-1] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)
    h, w = img.shape[:2]
    scale = min(height / h, width / w)
    new_h, new_w = int(h * scale), int(w * scale)
    resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas


def to_unit_range(images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1] (``VaeImageProcessor.preprocess``: x/255*2-1)."""
    # contiguous NCHW: a permuted (channels-last) input sends the convolutions down other kernels
    x = torch.from_numpy(np.stack(images) if isinstance(images, list) else images).permute(0, 3, 1, 2).contiguous()
    x = x.float()
    return (x / 255.0) * 2.0 - 1.0


def to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """VAE output (N, 3, H, W) -> (N, H, W, 3) uint8: ``(x/2+0.5).clamp(0,1)``, then ``(x*255).round()``."""
    images = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    return (images * 255).round().astype(np.uint8)
