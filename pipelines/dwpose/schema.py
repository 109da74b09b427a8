"""fal-ai/dwpose schema (seeds/002) plus the ``draw_mode`` of fal's current schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pipelines.common.schema_types import FalInput, Image

DrawMode = Literal["full-pose", "body-pose", "face-pose", "hand-pose", "face-hand-mask", "face-mask", "hand-mask"]


class DWPoseInput(FalInput):
    image_url: str = Field(
        description="URL of the image to be processed",
        examples=["https://github.com/badayvedat/sane-controlnet-aux/blob/main/tests/data/pose_sample.jpg?raw=true"],
    )
    draw_mode: DrawMode = Field(
        default="body-pose",
        description="Mode of drawing the pose on the image. Options are: 'full-pose', 'body-pose', "
        "'face-pose', 'hand-pose', 'face-hand-mask', 'face-mask', 'hand-mask'.",
    )


class DWPoseOutput(BaseModel):
    image: Image = Field(description="The predicted pose image")
