"""fal-ai/pulid schema, exactly as fal's page (seeds/003)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pipelines.common.schema_types import FalInput, Image, ImageSize, ImageSizePreset

DEFAULT_NEGATIVE_PROMPT = (
    "flaws in the eyes, flaws in the face, flaws, lowres, non-HDRi, low quality, worst quality,"
    "artifacts noise, text, watermark, glitch, deformed, mutated, ugly, disfigured, hands, low "
    "resolution, partially rendered objects, deformed or partially rendered eyes, deformed, deformed "
    "eyeballs, cross-eyed,blurry"
)


class ReferenceFace(FalInput):
    image_url: str = Field(description="URL of the reference face image")


class PuLIDInput(FalInput):
    reference_images: list[ReferenceFace] = Field(
        min_length=1,
        description="List of reference faces, ideally 4 images.",
        examples=[
            [
                {"image_url": "https://storage.googleapis.com/falserverless/pulid/img2.png"},
                {"image_url": "https://storage.googleapis.com/falserverless/pulid/img1.png"},
            ]
        ],
    )
    prompt: str = Field(
        description="Prompt to generate the face from",
        examples=["portrait, impressionist painting, loose brushwork, vibrant color, light and shadow play"],
    )
    negative_prompt: str = Field(
        default=DEFAULT_NEGATIVE_PROMPT, description="Negative prompt to generate the face from"
    )
    num_images: int = Field(default=1, ge=1, description="Number of images to generate")
    guidance_scale: float = Field(default=1.2, ge=0.0, description="Guidance scale")
    num_inference_steps: int = Field(default=4, ge=1, description="Number of steps to take")
    seed: int | None = Field(default=None, description="Random seed for reproducibility")
    image_size: ImageSize | ImageSizePreset = Field(
        default=ImageSize(width=768, height=1024),
        description="Size of the generated image",
    )
    id_scale: float = Field(default=0.8, ge=0.0, description="ID scale")
    mode: Literal["fidelity", "extreme style"] = Field(default="fidelity", description="Mode of generation")
    id_mix: bool = Field(
        default=False,
        description="if you want to mix two ID image, please turn this on, otherwise, turn this off",
    )


class PuLIDOutput(BaseModel):
    images: list[Image] = Field(description="List of generated images")
    seed: int = Field(description="Random seed used for reproducibility")
