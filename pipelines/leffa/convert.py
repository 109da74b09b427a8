"""``fal-onprem weights convert leffa``: ``pose_transfer.pth`` (20.9 GB, fp32, one pickled state dict) ->
``{vae,unet_encoder,unet}.safetensors`` in float16, prefixes stripped, so serving never unpickles.

The ``.pth`` is memory-mapped and unpickled with ``weights_only`` (no code runs); every key and shape is checked
against the networks built on the meta device before anything is written; each output is streamed one tensor
at a time, so RAM stays near one tensor above the page cache. ``weights.convert.run_conversion`` writes to a
temporary folder renamed into place, so an interrupted conversion never looks finished.
"""

from __future__ import annotations

from pathlib import Path

import torch

from weights.convert import load_torch_state_dict, save_streaming

from .configs import PREFIXES, REAL, LeffaConfig
from .networks import build_meta

OUTPUT_DTYPE = torch.float16


def expected_layout(config: LeffaConfig = REAL) -> dict[str, tuple[int, ...]]:
    """``prefix.key -> shape`` of the checkpoint the networks load (3608 tensors for the real config)."""
    return {
        f"{prefix}.{key}": tuple(t.shape)
        for prefix, module in build_meta(config).items()
        for key, t in module.state_dict().items()
    }


def check_layout(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], name: str) -> None:
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} {tuple(tensors[k].shape)} != {s}" for k, s in expected.items() if k in tensors
             and tuple(tensors[k].shape) != s]  # fmt: skip
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(wrong)} with another shape (e.g. {wrong[:3]})" if wrong else ""]  # fmt: skip
        raise ValueError(f"{name} is not Leffa's pose-transfer checkpoint: " + "; ".join(p for p in parts if p))


def convert(src: Path, dst: Path, config: LeffaConfig = REAL, dtype: torch.dtype = OUTPUT_DTYPE) -> None:
    tensors = load_torch_state_dict(src)  # memory-mapped
    check_layout(tensors, expected_layout(config), src.name)
    dst.mkdir(parents=True, exist_ok=True)
    for prefix in PREFIXES:
        part = {k[len(prefix) + 1 :]: t for k, t in tensors.items() if k.split(".", 1)[0] == prefix}
        save_streaming(part, dst / f"{prefix}.safetensors", metadata={"format": "pt", "source": src.name}, cast=dtype)
