"""Helpers shared by the DensePose tests: golden-fixture access and the README's comparison rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

LEVELS = ("p2", "p3", "p4", "p5", "p6")


def close(ours: torch.Tensor, ref: torch.Tensor, name: str = "") -> None:
    """The README's float-stage rule: max|ours - ref| <= 1e-4 * max|ref| + 1e-6."""
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err = (ours.float() - ref.float()).abs().max().item()
    bound = 1e-4 * ref.abs().max().item() + 1e-6
    assert err <= bound, f"{name}: max abs error {err:.3g} > {bound:.3g}"


def assert_box_sets_match(
    ours_boxes: torch.Tensor,
    ours_scores: torch.Tensor,
    ref_boxes: torch.Tensor,
    ref_scores: torch.Tensor,
    box_tol: float,
    score_tol: float,
    min_fraction: float = 1.0,
) -> None:
    """Every reference (box, score) has a partner in ours within the tolerances (order-free)."""
    box_err = (ref_boxes[:, None, :] - ours_boxes[None, :, :]).abs().amax(dim=-1)
    score_err = (ref_scores[:, None] - ours_scores[None, :]).abs()
    matched = ((box_err <= box_tol) & (score_err <= score_tol)).any(dim=1)
    fraction = matched.float().mean().item()
    assert fraction >= min_fraction, f"only {fraction:.4f} of {len(ref_boxes)} reference boxes matched"


class Chain:
    """One golden chain directory, e.g. ``densepose/thin/leffa``."""

    def __init__(self, reference_dir: Path, variant: str, consumer: str) -> None:
        self.root = reference_dir / "densepose"
        self.dir = self.root / variant / consumer
        self.variant, self.consumer = variant, consumer
        self.stages = load_file(str(self.dir / "stages.safetensors"))

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.stages[key]

    def __contains__(self, key: str) -> bool:
        return key in self.stages

    def png(self, name: str) -> np.ndarray:
        return np.asarray(Image.open(self.dir / name))

    def canvas(self) -> Image.Image:
        return Image.open(self.root / "inputs" / f"{self.consumer}_canvas_768x1024.png").convert("RGB")

    def network_order_canvas(self) -> np.ndarray:
        """What the consumer hands the predictor: RGB for Leffa (its quirk), BGR for CatVTON."""
        rgb = np.asarray(self.canvas())
        return rgb if self.consumer == "leffa" else np.ascontiguousarray(rgb[:, :, ::-1])

    def ambiguous(self) -> np.ndarray:
        return self.png("ambiguous_gap_lt_1e-3.png") > 0

    def fixed_boxes(self) -> np.ndarray:
        return self["d.fixed_boxes_input_frame"].numpy()
