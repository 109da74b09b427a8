"""The echo pipeline's work as a Replicate Cog predictor, for ``server_overhead --vs-cog``.

Runs inside the benchmark's own Cog virtualenv (not the project's): decode a PNG data URI, tint it by a
seed-derived colour, return a PNG (Cog answers a ``Path`` output as a data URI when it has no upload URL).
"""

from __future__ import annotations

import base64
import io
import tempfile

import numpy as np
from cog import BasePredictor, Path
from PIL import Image


class Predictor(BasePredictor):
    async def predict(self, image_url: str, seed: int = 0) -> Path:  # async: COG_MAX_CONCURRENCY > 1 needs it
        data = base64.b64decode(image_url.split(",", 1)[1])
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64)), dtype=np.int16)
        tint = np.random.default_rng(seed).integers(0, 64, 3).astype(np.int16)
        out = np.clip(image + tint, 0, 255).astype(np.uint8)
        with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as f:
            Image.fromarray(out).save(f, format="PNG")
        return Path(f.name)
