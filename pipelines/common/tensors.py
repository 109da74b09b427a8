"""Small torch/numpy helpers shared by the model packages: dtype names and seeded recipe weights."""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``"torch.bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return TORCH_DTYPES[dtype.removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(TORCH_DTYPES)}") from None


def recipe_array(tag: str, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic random tensor for a checkpoint key ("recipe v1" of the reference fixtures).

    One legacy numpy ``RandomState`` per tensor, seeded from crc32 of ``tag:key``, so the same weights
    come out on any machine. BatchNorm scales near 1 and variances in [0.5, 2] keep activations finite
    through deep networks; conv/linear weights are fan-in scaled.
    """
    rs = np.random.RandomState(zlib.crc32(f"{tag}:{key}".encode()) & 0xFFFFFFFF)
    if key.endswith("running_var"):
        a = rs.uniform(0.5, 2.0, shape)
    elif len(shape) == 1 and key.endswith("weight"):
        a = rs.uniform(0.5, 1.5, shape)
    elif len(shape) == 1:
        a = rs.normal(0.0, 0.1, shape)
    else:
        a = rs.normal(0.0, 1.0, shape) * math.sqrt(1.0 / int(np.prod(shape[1:])))
    return a.astype(np.float32)
