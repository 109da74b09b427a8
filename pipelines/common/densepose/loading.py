"""Building DensePose R-50-FPN from a WeightSource: real checkpoint, tiny or random_full.

- ``real``: ``model_final_162be9.pkl`` converted once to safetensors (``convert.py``, run by
  ``fal-onprem weights convert``), loaded by name with strict key matching. Serving never unpickles.
- ``tiny`` / ``random_full``: the golden fixtures' weight recipe (one numpy legacy ``RandomState``
  per tensor, seeded from crc32 of ``tag:key``). With seed 0 the tags are those of the goldens
  (``densepose-thin`` / ``densepose-full``), so ``tiny(0)`` reproduces the stored thin weights bit for
  bit and ``random_full(0)`` matches ``full/weights_checksums.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from pipelines.common.tensors import TORCH_DTYPES
from pipelines.common.tensors import recipe_array as common_recipe_array
from pipelines.contract import WeightSource

from .config import REAL_CONFIG, TINY_CONFIG, DensePoseConfig
from .model import DensePoseRCNN

PIPELINE = "densepose"  # weights/manifests/densepose.json
CHECKPOINT_KEY = "model"  # model_final_162be9.pkl, served from converted/densepose/model.safetensors


def recipe_array(tag: str, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Recipe v1 of shared/reference/densepose: the shared recipe, with the stem scaled for raw pixels."""
    a = common_recipe_array(tag, key, shape)
    if key == "backbone.bottom_up.stem.conv1.weight":
        a = a * np.float32(1.0 / 64)  # the input is raw 0..255 pixels
    return a


def random_state_dict(model: DensePoseRCNN, tag: str) -> dict[str, torch.Tensor]:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return {k: torch.from_numpy(recipe_array(tag, k, s)) for k, s in shapes.items()}


def config_for(source: WeightSource) -> DensePoseConfig:
    return TINY_CONFIG if source.kind == "tiny" else REAL_CONFIG


def recipe_tag(source: WeightSource) -> str:
    base = "densepose-thin" if source.kind == "tiny" else "densepose-full"
    return base if source.seed == 0 else f"{base}-seed{source.seed}"


def real_state_dict(weights_dir: Path | str | None) -> dict[str, torch.Tensor]:
    """The converted checkpoint (``weights.locate`` raises MissingWeights naming the pull/convert command)."""
    from weights import locate

    path = locate(PIPELINE, CHECKPOINT_KEY, Path(weights_dir) if weights_dir else None)
    return load_file(str(path))


def build_model(source: WeightSource, device: str | torch.device = "cpu", dtype: str = "float32") -> DensePoseRCNN:
    """The model for ``source``, in eval mode, on ``device`` / ``dtype``, all tensors strictly loaded."""
    cfg = config_for(source)
    with torch.device("meta"):
        model = DensePoseRCNN(cfg)
    if source.kind == "real":
        state = real_state_dict(source.weights_dir)
    else:
        state = random_state_dict(model, recipe_tag(source))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=TORCH_DTYPES[dtype]).eval().requires_grad_(False)
