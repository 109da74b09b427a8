"""``.pth`` -> safetensors conversion of the LivePortrait network checkpoints.

Registered in ``weights.convert.CONVERTERS`` as ``liveportrait`` (``convert(src, dst)``); the manifest
entries of the five networks name it. The output uses the flattened layout of
``Kijai/LivePortrait_safetensors``: plain state dicts with the original key names (spectral-norm
triples kept), DDP ``module.`` prefixes removed, and the stitching checkpoint's three sub-dicts
flattened to ``retarget_shoulder_module.* / retarget_mouth_module.* / retarget_eye_module.*``.
Dtypes are unchanged. ``state_dict.normalize_state_dict`` reads both layouts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from .state_dict import flatten_stitching


def flatten_checkpoint(raw: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The tensors of a LivePortrait checkpoint as one flat, prefix-free dict."""
    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]  # type: ignore[assignment]
    if any(isinstance(v, Mapping) for v in raw.values()):
        return flatten_stitching(raw)
    return {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in raw.items()
        if isinstance(v, torch.Tensor)
    }


def convert(src: Path | str, dst: Path | str) -> None:
    """Read ``src`` with ``torch.load(weights_only=True)`` and write safetensors to ``dst``."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    raw = torch.load(src, map_location="cpu", weights_only=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in flatten_checkpoint(raw).items()}
    if not tensors:
        raise ValueError(f"{src} holds no tensors")
    save_file(tensors, str(dst), metadata={"format": "pt", "source": src.name})


pth_to_safetensors = convert
