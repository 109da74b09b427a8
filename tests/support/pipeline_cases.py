"""One small, valid request per served pipeline, for tests that treat every pipeline alike (CUDA parity).

Each case names the endpoint, builds its inputs and the images its loader returns, and says how close a
half-precision run must stay to float32. A pipeline that is not served yet has no case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
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
    images: dict[str, Image.Image] = field(default_factory=dict)  # URL -> image; any other URL gets PHOTO
    half_psnr_db: float = 35.0  # output image PSNR of the GPU half-precision run against GPU float32

    def pipeline_class(self) -> type[Pipeline]:
        spec = registry.get(self.endpoint)
        assert spec is not None, self.endpoint
        return registry.pipeline_class(spec)

    def loader(self) -> Callable[[str, list[str | int]], Image.Image]:
        return lambda url, loc: self.images.get(url, PHOTO)


def _dwpose() -> list[BaseModel]:
    from pipelines.dwpose.schema import DWPoseInput

    return [DWPoseInput(image_url="x"), DWPoseInput(image_url="x", draw_mode="body-pose")]


def _liveportrait() -> list[BaseModel]:
    from pipelines.liveportrait.schema import LivePortraitImageInput

    return [
        LivePortraitImageInput(image_url="x", smile=0.8, output_format="png"),
        LivePortraitImageInput(image_url="x", rotate_yaw=10.0, blink=-5.0, output_format="png"),
    ]


def _catvton() -> list[BaseModel]:
    from pipelines.catvton.schema import CatVTONInput

    common = {"human_image_url": "person", "garment_image_url": "garment", "num_inference_steps": 3}
    return [
        CatVTONInput(**common, cloth_type="upper", image_size={"width": 96, "height": 128}),
        CatVTONInput(**common, cloth_type="overall", image_size={"width": 96, "height": 128}, guidance_scale=1.5),
    ]


def _leffa() -> list[BaseModel]:
    from pipelines.leffa.schema import LeffaPoseTransferInput

    common = {"pose_image_url": "pose", "person_image_url": "person", "num_inference_steps": 3}
    return [LeffaPoseTransferInput(**common), LeffaPoseTransferInput(**common, guidance_scale=1.5)]


def _pulid() -> list[BaseModel]:
    from pipelines.pulid.schema import PuLIDInput

    common = {"reference_images": [{"image_url": "face"}], "image_size": {"width": 128, "height": 128}}
    return [
        PuLIDInput(**common, prompt="a portrait, oil painting", num_inference_steps=2),
        PuLIDInput(**common, prompt="a photo", mode="extreme style", num_images=2, num_inference_steps=2),
    ]


GARMENT = Image.fromarray(
    np.kron(np.array([[[230, 40, 40]], [[250, 250, 250]]] * 6, np.uint8), np.ones((10, 150, 1), np.uint8))
)
POSE = PHOTO.crop((96, 0, 416, 512))

CASES = [
    Case("fal-ai/dwpose", _dwpose),
    Case("fal-ai/live-portrait/image", _liveportrait),
    Case("fal-ai/cat-vton", _catvton, {"garment": GARMENT}),
    Case("fal-ai/leffa/pose-transfer", _leffa, {"pose": POSE}),
    Case("fal-ai/pulid", _pulid),
]
