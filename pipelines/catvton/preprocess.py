"""CatVTON's image preparation (``utils.py`` of the original and the app's glue), on PIL images.

Sizes: the output is ``W x H`` = ``image_size`` rounded down to multiples of 8, as the original's VAE
would produce them (it floors odd sizes through its 8x downsampling); each side must then be in
``[MIN_SIDE, MAX_SIDE]``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter

from pipelines.common.schema_types import ImageSize, resolve_image_size
from pipelines.contract import ItemError

VAE_SCALE = 8
MIN_SIDE = 64
MAX_SIDE = 2048
MASK_BLUR_RADIUS = 9


def target_size(image_size: ImageSize | str) -> tuple[int, int]:
    """(W, H) of the output for the request's ``image_size``; a 422 naming the field when out of range."""
    width, height = resolve_image_size(image_size)
    width, height = width - width % VAE_SCALE, height - height % VAE_SCALE
    for name, value in (("width", width), ("height", height)):
        if not MIN_SIDE <= value <= MAX_SIDE:
            loc = ["image_size", name] if isinstance(image_size, ImageSize) else ["image_size"]
            raise ItemError.invalid_input(
                loc,
                f"{name} must be between {MIN_SIDE} and {MAX_SIDE} pixels after rounding down to a multiple of "
                f"{VAE_SCALE}; got {value}",
            )
    return width, height


def resize_and_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Center-crop to the W:H aspect (integer box math), then LANCZOS to ``size`` (the person)."""
    w, h = image.size
    target_w, target_h = size
    if w / h < target_w / target_h:
        new_w, new_h = w, w * target_h // target_w
    else:
        new_w, new_h = h * target_w // target_h, h
    box = ((w - new_w) // 2, (h - new_h) // 2, (w + new_w) // 2, (h + new_h) // 2)
    return image.crop(box).resize(size, Image.Resampling.LANCZOS)


def resize_and_padding(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Fit inside ``size`` (LANCZOS) and paste centred on a white canvas (the garment)."""
    w, h = image.size
    target_w, target_h = size
    if w / h < target_w / target_h:
        new_w, new_h = w * target_h // h, target_h
    else:
        new_w, new_h = target_w, h * target_w // w
    canvas = Image.new("RGB", size, (255, 255, 255))
    canvas.paste(
        image.resize((new_w, new_h), Image.Resampling.LANCZOS), ((target_w - new_w) // 2, (target_h - new_h) // 2)
    )
    return canvas


def blur_mask(mask: np.ndarray | Image.Image) -> Image.Image:
    """``VaeImageProcessor.blur(mask, 9)``: PIL GaussianBlur of the 0/255 AutoMasker mask."""
    pil = mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask, dtype=np.uint8), "L")
    return pil.convert("L").filter(ImageFilter.GaussianBlur(MASK_BLUR_RADIUS))


def image_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [-1, 1]: ``x / 127.5 - 1`` (``prepare_image``)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def mask_tensor(blurred: Image.Image) -> torch.Tensor:
    """(1, 1, H, W) float32 0/1: ``/255``, then ``>= 0.5`` (``prepare_mask_image``); 1 = repaint."""
    array = np.asarray(blurred.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((array >= 0.5).astype(np.float32))[None, None]


def masked_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The person with the repaint region set to 0 (mid grey): ``image * (mask < 0.5)``."""
    return image * (mask < 0.5)
