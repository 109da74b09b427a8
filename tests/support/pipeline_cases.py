"""One small, valid request per served pipeline, for tests that treat every pipeline alike (CUDA parity).

Each case names the endpoint, builds its inputs and the images its loader returns, and says how close a
half-precision run must stay to float32. A pipeline that is not served yet has no case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import skimage.data
from PIL import Image
from pydantic import BaseModel

from pipelines import registry
from pipelines.contract import Pipeline

PHOTO = Image.fromarray(skimage.data.astronaut())  # 512 x 512, one face, one person


@dataclass(frozen=True)
class Case:
    endpoint: str
    inputs: Callable[[], list[BaseModel]]  # two different requests: batched == single is checked on them
    image: Image.Image = field(default_factory=lambda: PHOTO)
    half_psnr_db: float = 35.0  # output image PSNR of the GPU half-precision run against GPU float32

    def pipeline_class(self) -> type[Pipeline]:
        spec = registry.get(self.endpoint)
        assert spec is not None, self.endpoint
        return registry.pipeline_class(spec)

    def loader(self) -> Callable[[str, list[str | int]], Image.Image]:
        return lambda url, loc: self.image


def _dwpose() -> list[BaseModel]:
    from pipelines.dwpose.schema import DWPoseInput

    return [DWPoseInput(image_url="x"), DWPoseInput(image_url="x", draw_mode="body-pose")]


def _liveportrait() -> list[BaseModel]:
    from pipelines.liveportrait.schema import LivePortraitImageInput

    return [
        LivePortraitImageInput(image_url="x", smile=0.8, output_format="png"),
        LivePortraitImageInput(image_url="x", rotate_yaw=10.0, blink=-5.0, output_format="png"),
    ]


CASES = [
    Case("fal-ai/dwpose", _dwpose),
    Case("fal-ai/live-portrait/image", _liveportrait),
]
