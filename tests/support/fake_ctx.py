"""A minimal in-memory RunContext for pipeline tests."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipelines.common.image_io import encode_image, to_pil


@dataclass
class FakeContext:
    """Records logs, progress and saved images; ``save_image`` returns a data-URI fal Image dict."""

    seeds: list[int] = field(default_factory=list)
    cancelled: set[int] = field(default_factory=set)
    logs: list[tuple[int | None, str, str]] = field(default_factory=list)
    steps: list[tuple[int, int]] = field(default_factory=list)
    item_steps: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    saved: dict[int, Image.Image] = field(default_factory=dict)

    def log(self, message: str, item: int | None = None, level: str = "INFO") -> None:
        self.logs.append((item, level, message))

    def progress(self, step: int, total: int, item: int | None = None) -> None:
        if item is None:
            self.steps.append((step, total))
        else:
            self.item_steps.setdefault(item, []).append((step, total))

    def is_cancelled(self, item: int) -> bool:
        return item in self.cancelled

    def seed(self, item: int) -> int:
        return self.seeds[item] if item < len(self.seeds) else item

    def save_image(self, item: int, image: Any, output_format: str = "png") -> dict[str, Any]:
        pil = to_pil(image if isinstance(image, Image.Image) else np.asarray(image))
        self.saved[item] = pil
        data, content_type = encode_image(pil, output_format)
        return {
            "url": f"data:{content_type};base64," + base64.b64encode(data).decode(),
            "content_type": content_type,
            "file_name": f"{item}.{output_format}",
            "file_size": len(data),
            "width": pil.width,
            "height": pil.height,
        }


class FailingSaveContext(FakeContext):
    """``save_image`` raises for one item, as a full disk or a failed upload would."""

    def __init__(self, failing_item: int) -> None:
        super().__init__()
        self.failing_item = failing_item

    def save_image(self, item: int, image: Any, output_format: str = "png") -> dict[str, Any]:
        if item == self.failing_item:
            raise OSError("disk full")
        return super().save_image(item, image, output_format)
