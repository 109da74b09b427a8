"""Small torch/numpy helpers shared by the model packages: dtype names, GPU precision flags and seeded
recipe weights."""

from __future__ import annotations

import logging
import math
import os
import zlib

import numpy as np
import torch

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ALLOW_TF32_ENV = "FAL_ONPREM_ALLOW_TF32"

log = logging.getLogger(__name__)


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``"torch.bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return TORCH_DTYPES[dtype.removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(TORCH_DTYPES)}") from None


def configure_precision(device: str | torch.device, dtype: str | torch.dtype) -> None:
    """Fidelity first: float32 on CUDA means true float32, not TF32.

    PyTorch lets cuDNN convolutions use TF32 by default on Ampere and newer GPUs (10-bit mantissa),
    which moves float32 results visibly away from the float32 reference outputs. With ``dtype`` float32
    on a CUDA device this turns TF32 off for convolutions and matmuls, unless ``FAL_ONPREM_ALLOW_TF32=1``
    opts in to the faster TF32 for both. The flags are process-wide; other devices and dtypes leave them
    as they are. Setting them needs no GPU.
    """
    if torch.device(device).type != "cuda" or torch_dtype(dtype) != torch.float32:
        return
    allow = os.environ.get(ALLOW_TF32_ENV, "").strip() == "1"
    torch.backends.cudnn.allow_tf32 = allow
    torch.backends.cuda.matmul.allow_tf32 = allow
    log.info("float32 on %s: TF32 %s (%s=%s)", device, "on" if allow else "off", ALLOW_TF32_ENV, int(allow))


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
