"""Which dtype each network runs in.

Placeholder policy (refined by measurement): M and S stay float32; F, W, G use the requested dtype.
"""

from __future__ import annotations

import torch

_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _NAMES[dtype.removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(_NAMES)}") from None


def network_dtypes(dtype: torch.dtype, device: torch.device) -> dict[str, torch.dtype]:
    """Per-network dtype. CPU always runs float32 (half 3-D pooling is not implemented there)."""
    if device.type == "cpu":
        dtype = torch.float32
    return {
        "appearance": dtype,
        "motion": torch.float32,
        "warping": dtype,
        "spade": dtype,
        "stitching": torch.float32,
    }
