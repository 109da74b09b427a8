"""CatVTON's AutoMasker with its three networks: DensePose, SCHP-LIP and SCHP-ATR, batched over people.

``mask_people`` returns, per person image (already resized to the output size), the ``cloth_type``
mask of ``automasker.cloth_agnostic_mask`` (uint8 0/255). The networks run on the worker's device, as
one batch per network, inside the pipeline's ``begin``: they are ~100 M parameters of GPU work per
image, too heavy for the CPU ``prepare`` threads, and batching them with the other requests of the batch
is what makes them cheap. The label-map rules run on the CPU (cv2/numpy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.common.densepose.predictor import DensePose
from pipelines.common.parsing.parser import HumanParser
from pipelines.contract import Dtype, WeightSource

from .automasker import ClothType, cloth_agnostic_mask


@dataclass
class AutoMasker:
    densepose: DensePose
    lip: HumanParser
    atr: HumanParser

    @classmethod
    def load(cls, source: WeightSource, device: str = "cpu", dtype: Dtype = "float32") -> AutoMasker:
        return cls(
            DensePose.load(source, device, dtype),
            HumanParser.load("lip", source, device, dtype),
            HumanParser.load("atr", source, device, dtype),
        )

    def parameter_bytes(self) -> int:
        modules = (self.densepose.model, self.lip.net, self.atr.net)
        return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())

    def label_maps(self, people: Sequence[Image.Image]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(DensePose parts, LIP, ATR) label maps per person, each uint8 at the image's size."""
        dense = self.densepose.catvton_part_maps(list(people))
        lip = self.lip(list(people))
        atr = self.atr(list(people))
        return [(np.asarray(d), p, a) for d, p, a in zip(dense, lip, atr, strict=True)]

    def mask_people(self, people: Sequence[Image.Image], cloth_types: Sequence[ClothType]) -> list[np.ndarray]:
        """The AutoMasker mask (uint8 HxW, 255 = repaint) of each person for its cloth type."""
        maps = self.label_maps(people)
        return [cloth_agnostic_mask(*m, cloth_type=c) for m, c in zip(maps, cloth_types, strict=True)]
