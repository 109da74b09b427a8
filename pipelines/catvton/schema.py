"""fal-ai/cat-vton schema, exactly as fal's page (seeds/001)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pipelines.common.schema_types import FalInput, Image, ImageSize, ImageSizePreset

ClothType = Literal["upper", "lower", "overall", "inner", "outer"]


class CatVTONInput(FalInput):
    human_image_url: str = Field(
        description="Url for the human image.",
        examples=["https://storage.googleapis.com/falserverless/catvton/man5.jpg"],
    )
    garment_image_url: str = Field(
        description="Url to the garment image.",
        examples=["https://storage.googleapis.com/falserverless/catvton/tshirt.jpg"],
    )
    cloth_type: ClothType = Field(
        description="Type of the Cloth to be tried on.\n\nOptions:\nupper: Upper body cloth\n"
        "lower: Lower body cloth\noverall: Full body cloth\ninner: Inner cloth, like T-shirt inside "
        "a jacket\nouter: Outer cloth, like a jacket over a T-shirt",
        examples=["upper"],
    )
    image_size: ImageSize | ImageSizePreset = Field(
        default="portrait_4_3", description="The size of the generated image."
    )
    num_inference_steps: int = Field(default=30, ge=1, description="The number of inference steps to perform.")
    guidance_scale: float = Field(
        default=2.5,
        ge=0.0,
        description="The CFG (Classifier Free Guidance) scale is a measure of how close you want the "
        "model to stick to your prompt when looking for a related image to show you.",
    )
    seed: int | None = Field(
        default=None,
        description="The same seed and the same input given to the same version of the model will "
        "output the same image every time.",
    )


class CatVTONOutput(BaseModel):
    image: Image = Field(description="The output image.")
