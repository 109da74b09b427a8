"""State dicts for the SCHP parsers: checkpoint key handling (strict, no renames) and seeded random weights.

Checkpoints are the upstream SCHP ``.pth`` files (``{'state_dict': {'module.<name>': tensor}}``).
They are converted once to safetensors with the ``module.`` prefix stripped (``convert.py``); serving
only reads the safetensors (``weights.locate("schp", "lip"|"atr")``) and never unpickles.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pipelines.common.tensors import recipe_array

from .config import Dataset
from .network import SCHPNet

CHECKPOINT_PREFIX = "module."
MANIFEST_PIPELINE = "schp"


def strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` (DataParallel) prefix every upstream key carries."""
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(CHECKPOINT_PREFIX):
            raise KeyError(f"checkpoint key {key!r} lacks the {CHECKPOINT_PREFIX!r} prefix")
        out[key[len(CHECKPOINT_PREFIX) :]] = value
    return out


def check_keys(net: SCHPNet, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise naming every missing, unexpected or mis-shaped key (exact matching, no renames)."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise ValueError(f"SCHP state dict mismatch: missing={missing} unexpected={unexpected} shapes={shapes}")


def load_strict(net: SCHPNet, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Check keys and shapes, then load (``assign``: a net built on ``meta`` takes the tensors)."""
    check_keys(net, state_dict)
    net.load_state_dict(dict(state_dict), strict=True, assign=True)


def recipe_tag(dataset: Dataset, tiny: bool, seed: int) -> str:
    """``schp-lip`` / ``schp-atr`` at full size and seed 0: exactly the reference fixtures' weights."""
    tag = f"schp-{dataset}" + ("-tiny" if tiny else "")
    return tag if seed == 0 else f"{tag}-seed{seed}"


def random_checkpoint(net: SCHPNet, tag: str) -> dict[str, torch.Tensor]:
    """A checkpoint-layout state dict (with ``module.``) of recipe weights for ``net``'s shapes."""
    return {
        CHECKPOINT_PREFIX + key: torch.from_numpy(recipe_array(tag, CHECKPOINT_PREFIX + key, tuple(t.shape)))
        for key, t in net.state_dict().items()
    }
