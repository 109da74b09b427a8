"""fal's shared schema types (``Image``, ``ImageSize``, size presets), as on the endpoint pages."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ImageSizePreset = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]

# fal toolkit IMAGE_SIZE_PRESETS, as (width, height).
IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}

OutputFormat = Literal["jpeg", "png"]


class FalInput(BaseModel):
    """Base of every request model: numbers must be finite (JSON's NaN / Infinity extensions are a 422)."""

    model_config = ConfigDict(allow_inf_nan=False)


class ImageSize(FalInput):
    width: int = Field(default=512, description="The width of the generated image.", gt=0, le=14142)
    height: int = Field(default=512, description="The height of the generated image.", gt=0, le=14142)


def resolve_image_size(value: ImageSize | str) -> tuple[int, int]:
    """``image_size`` (preset name or object) as (width, height)."""
    if isinstance(value, ImageSize):
        return value.width, value.height
    return IMAGE_SIZE_PRESETS[value]


class File(BaseModel):
    url: str = Field(description="The URL where the file can be downloaded from.")
    content_type: str | None = Field(default=None, description="The mime type of the file.")
    file_name: str | None = Field(
        default=None, description="The name of the file. It will be auto-generated if not provided."
    )
    file_size: int | None = Field(default=None, description="The size of the file in bytes.")
    file_data: str | None = Field(default=None, description="File data")


class Image(File):
    width: int | None = Field(default=None, description="The width of the image in pixels.")
    height: int | None = Field(default=None, description="The height of the image in pixels.")
