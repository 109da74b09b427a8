"""Image decoding with limits, and encoding of outputs.

Only JPEG, PNG and WEBP are accepted. The byte cap is checked before parsing and the pixel cap
from the header, before the pixels are decoded, so a decompression bomb never allocates. Degenerate
sizes (a side under ``MIN_IMAGE_SIDE``) are refused from the header too: no pipeline can use a
3000x1 strip, and resizing one to a size limit would give a zero side.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

ALLOWED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MIN_IMAGE_SIDE = 8


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an acceptable image. ``error_type`` is a fal validation type name."""

    def __init__(self, message: str, error_type: str = "image_load_error") -> None:
        super().__init__(message)
        self.error_type = error_type


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Image.Image:
    """Bytes -> RGB PIL image with EXIF orientation applied."""
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(
            f"image is {len(data)} bytes, more than the limit of {limits.max_bytes}", "file_too_large"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if fmt not in ALLOWED_FORMATS:
                raise ImageDecodeError(
                    f"unsupported image format {fmt or 'unknown'}; use JPEG, PNG or WEBP",
                    "unsupported_image_format",
                )
            width, height = img.size
            if width * height > limits.max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} pixels, more than the limit of {limits.max_pixels}",
                    "image_too_large",
                )
            check_min_side(width, height)
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(
            f"image has more pixels than the limit of {limits.max_pixels}", "image_too_large"
        ) from exc
    except Image.UnidentifiedImageError as exc:  # PIL's text names an internal buffer object
        raise ImageDecodeError("cannot decode image: not a JPEG, PNG or WEBP file", "image_load_error") from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageDecodeError(f"cannot decode image: {exc}", "image_load_error") from exc
    # in place and only when needed: a 40 MP image is 120 MB, every needless copy counts per prefetched job
    ImageOps.exif_transpose(img, in_place=True)
    return img if img.mode == "RGB" else img.convert("RGB")


def check_min_side(width: int, height: int, what: str = "image") -> None:
    """Refuse a size with a side under ``MIN_IMAGE_SIDE`` (also for a pipeline's own resized working size)."""
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageDecodeError(
            f"{what} is {width}x{height} pixels; each side must be at least {MIN_IMAGE_SIDE} pixels",
            "image_too_small",
        )


ARRAY_STRIP_BYTES = 8 * 1024 * 1024


def rgb_array(image: Image.Image) -> np.ndarray:
    """An RGB PIL image as an HxWx3 uint8 array, copied in strips.

    ``np.asarray(image)`` goes through ``tobytes``, which holds the pixels twice more (its chunks and
    their join) on top of the image and the array: for a 40 MP image that is 240 MB of extra peak per
    prepare thread. Strips keep the extra to a few MB; the values are the same.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, ARRAY_STRIP_BYTES // max(1, width * 3))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        out[top:bottom] = np.asarray(image.crop((0, top, width, bottom)))
    return out


def to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """PIL image or HxWx3 / HxW uint8 array -> PIL image."""
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 array, got {arr.dtype}")
    return Image.fromarray(arr)


def encode_image(image: Image.Image | np.ndarray, output_format: str = "png") -> tuple[bytes, str]:
    """Encode for output; returns (bytes, content type). JPEG quality 95, as fal's outputs."""
    pil = to_pil(image)
    fmt = output_format.lower()
    buf = io.BytesIO()
    if fmt == "jpeg":
        pil.convert("RGB").save(buf, format="JPEG", quality=95)
    elif fmt == "png":
        pil.save(buf, format="PNG")
    elif fmt == "webp":
        pil.save(buf, format="WEBP", quality=95)
    else:
        raise ValueError(f"unknown output format {output_format!r}")
    return buf.getvalue(), CONTENT_TYPES[fmt]
