"""Convert an SCHP ``.pth`` checkpoint to safetensors once, so serving never unpickles.

Registered as the ``schp`` converter of ``weights.convert`` (run by ``fal-onprem weights pull|convert
schp``); also usable directly: ``python -m pipelines.common.parsing.convert SRC.pth DST.safetensors``.
The upstream file is ``{'state_dict': {'module.<name>': tensor}}`` (603 tensors). The output has the
``module.`` prefix stripped and is checked, key by key and shape by shape, against the full-size
network built on the ``meta`` device. Tensors are written unchanged (float32).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import checkpoint
from .config import Dataset, config_for
from .network import SCHPNet

CLASSES_TO_DATASET: dict[int, Dataset] = {
    config_for("lip").num_classes: "lip",
    config_for("atr").num_classes: "atr",
}


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an upstream SCHP checkpoint, unpickled with ``weights_only=True``."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the 2019 files may use the legacy (pre-zip) format, which cannot be mmapped
        raw = torch.load(path, map_location="cpu", weights_only=True)
    state = raw["state_dict"] if isinstance(raw, Mapping) and "state_dict" in raw else raw
    return dict(state)


def dataset_of(state: Mapping[str, torch.Tensor]) -> Dataset:
    """LIP or ATR, from the class count of the fusion classifier."""
    classes = int(state["fushion.3.weight"].shape[0])
    if classes not in CLASSES_TO_DATASET:
        raise ValueError(f"SCHP checkpoint with {classes} classes: neither LIP (20) nor ATR (18)")
    return CLASSES_TO_DATASET[classes]


def convert(src: Path, dst: Path) -> None:
    """``weights.convert`` entry point: strip the prefix, verify strictly, write safetensors to ``dst``."""
    state = checkpoint.strip_prefix(read_checkpoint(Path(src)))
    with torch.device("meta"):
        net = SCHPNet(config_for(dataset_of(state)))
    checkpoint.check_keys(net, state)
    tensors = {k: v.to(torch.float32).contiguous() for k, v in state.items()}
    save_file(tensors, str(dst), metadata={"format": "pt", "source": Path(src).name})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="SCHP .pth -> safetensors (prefix stripped, strict check)")
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    args = ap.parse_args(argv)
    convert(args.src, args.dst)
    print(args.dst)


if __name__ == "__main__":
    main()
