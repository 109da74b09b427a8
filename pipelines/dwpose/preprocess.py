"""Image preparation before detection, as fal's controlnet-aux fork does it.

1. ``resize_with_pad``: short side to ``resolution`` (512), edge-padded to multiples of 64; detection and
   drawing happen on the padded image, the pad is cut off the drawn canvas at the end.
2. ``letterbox``: the YOLOX input, the padded image scaled into 640x640 at the top-left, filler 114.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DETECT_RESOLUTION = 512
PAD_MULTIPLE = 64
DET_INPUT_SIZE = 640
LETTERBOX_FILL = 114


@dataclass(frozen=True)
class Padded:
    """The resized, edge-padded RGB image and the size of its unpadded part."""

    image: np.ndarray  # HxWx3 uint8, H and W multiples of 64
    height: int  # unpadded size: the output image's size
    width: int


def output_size(height: int, width: int, resolution: int = DETECT_RESOLUTION) -> tuple[int, int]:
    """(H, W) of the result: input aspect, short side ``resolution``, rounded half to even."""
    k = float(resolution) / float(min(height, width))
    return int(np.round(float(height) * k)), int(np.round(float(width) * k))


def _pad_to_multiple(n: int, multiple: int = PAD_MULTIPLE) -> int:
    return int(np.ceil(float(n) / multiple) * multiple - n)


def resize_with_pad(image: np.ndarray, resolution: int = DETECT_RESOLUTION) -> Padded:
    """Short side to ``resolution`` (cubic when enlarging, area otherwise), then edge pad to /64."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    k = float(resolution) / float(min(height, width))
    out_h, out_w = output_size(height, width, resolution)
    interpolation = cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA
    resized = cv2.resize(image, (out_w, out_h), interpolation=interpolation)
    pad = [[0, _pad_to_multiple(out_h)], [0, _pad_to_multiple(out_w)], [0, 0]]
    return Padded(np.ascontiguousarray(np.pad(resized, pad, mode="edge")), out_h, out_w)


def letterbox(image: np.ndarray, size: int = DET_INPUT_SIZE) -> tuple[np.ndarray, float]:
    """YOLOX input: 3xSxS float32 (raw 0..255, channels as given) and the scale ratio ``r``."""
    height, width = image.shape[:2]
    r = min(size / height, size / width)
    new_w, new_h = int(width * r), int(height * r)
    canvas = np.full((size, size, 3), LETTERBOX_FILL, dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), r
