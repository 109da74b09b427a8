"""fal-ai/leffa/pose-transfer schema, exactly as fal's page (seeds/000).

fal's field descriptions are copied from try-on and look swapped; the names win:
``pose_image_url`` gives the pose (Leffa's ``src_image``), ``person_image_url`` the appearance.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from pipelines.common.schema_types import FalInput, Image, OutputFormat


class LeffaPoseTransferInput(FalInput):
    num_inference_steps: int = Field(default=50, ge=1, le=50, description="The number of inference steps to perform.")
    seed: int | None = Field(
        default=None,
        description="The same seed and the same input given to the same version of the model will "
        "output the same image every time.",
    )
    guidance_scale: float = Field(
        default=2.5,
        ge=0.0,
        le=20.0,
        description="The CFG (Classifier Free Guidance) scale is a measure of how close you want the "
        "model to stick to your input when generating the image.",
    )
    sync_mode: bool = Field(
        default=False,
        description="If set to true, the function will wait for the image to be generated and "
        "uploaded before returning the response. This will increase the latency of the function but "
        "it allows you to get the image directly in the response without going through the CDN.",
    )
    enable_safety_checker: bool = Field(default=True, description="If set to true, the safety checker will be enabled.")
    output_format: OutputFormat = Field(default="png", description="The format of the generated image.")
    pose_image_url: str = Field(
        description="Url for the human image.",
        examples=["https://storage.googleapis.com/falserverless/model_tests/leffa/person_image.jpg"],
    )
    person_image_url: str = Field(
        description="Url to the garment image.",
        examples=["https://storage.googleapis.com/falserverless/model_tests/leffa/pose_image.jpg"],
    )


class LeffaPoseTransferOutput(BaseModel):
    image: Image = Field(description="The output image.")
    seed: int = Field(description="The seed for the inference.")
    has_nsfw_concepts: bool = Field(description="Whether the image contains NSFW concepts.")
