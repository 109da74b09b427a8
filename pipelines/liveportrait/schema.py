"""fal-ai/live-portrait/image schema, exactly as fal's page (seeds/004).

Ranges are the ones visible on fal; the others are unbounded floats as on the page.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from pipelines.common.schema_types import FalInput, Image, OutputFormat


class LivePortraitImageInput(FalInput):
    image_url: str = Field(
        description="URL of the image to be animated",
        examples=["https://storage.googleapis.com/falserverless/model_tests/live-portrait/XKEmk3mAzGHUjK3qqH-UL.jpeg"],
    )
    blink: float = Field(default=0.0, ge=-30, le=30, description="Amount to blink the eyes")
    eyebrow: float = Field(default=0.0, ge=-30, le=30, description="Amount to raise or lower eyebrows")
    wink: float = Field(default=0.0, ge=0, le=25, description="Amount to wink")
    pupil_x: float = Field(default=0.0, ge=-45, le=45, description="Amount to move pupils horizontally")
    pupil_y: float = Field(default=0.0, ge=-45, le=45, description="Amount to move pupils vertically")
    aaa: float = Field(default=0.0, ge=-200, le=200, description="Amount to open mouth in 'aaa' shape")
    eee: float = Field(default=0.0, description="Amount to shape mouth in 'eee' position")
    woo: float = Field(default=0.0, description="Amount to shape mouth in 'woo' position")
    smile: float = Field(default=0.0, description="Amount to smile")
    rotate_pitch: float = Field(default=0.0, description="Amount to rotate the face in pitch")
    rotate_yaw: float = Field(default=0.0, description="Amount to rotate the face in yaw")
    rotate_roll: float = Field(default=0.0, description="Amount to rotate the face in roll")
    flag_pasteback: bool = Field(
        default=True,
        description="Whether to paste-back/stitch the animated face cropping from the face-cropping "
        "space to the original image space.",
    )
    flag_do_crop: bool = Field(
        default=True, description="Whether to crop the source portrait to the face-cropping space."
    )
    flag_do_rot: bool = Field(default=True, description="Whether to conduct the rotation when flag_do_crop is True.")
    flag_lip_zero: bool = Field(
        default=True,
        description="Whether to set the lip to closed state before animation. Only takes effect when "
        "flag_eye_retargeting and flag_lip_retargeting are False.",
    )
    # Bounds not on fal's page: a production guard against degenerate or memory-exhausting crops.
    dsize: int = Field(default=512, ge=64, le=2048, description="Size of the output image.")
    scale: float = Field(default=2.3, gt=0, description="Scaling factor for the face crop.")
    vx_ratio: float = Field(default=0.0, description="Horizontal offset ratio for face crop.")
    vy_ratio: float = Field(
        default=-0.125,
        description="Vertical offset ratio for face crop. Positive values move up, negative values move down.",
    )
    enable_safety_checker: bool = Field(
        default=False,
        description="Whether to enable the safety checker. If enabled, the model will check if the "
        "input image contains a face before processing it. The safety checker will process the input "
        "image",
    )
    output_format: OutputFormat = Field(default="jpeg", description="Output format")


class LivePortraitImageOutput(BaseModel):
    image: Image = Field(description="The generated image file.")
