"""Helpers for the Leffa tests: the golden fixtures' tiny checkpoint split by prefix, and a DensePose stand-in
that returns a given IUV image (the goldens feed a synthetic IUV image instead of running DensePose)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import load_file, save_file

from pipelines.contract import WeightSource
from pipelines.leffa.configs import PREFIXES

FIXTURES = "leffa/fixtures"


def split_fixture_checkpoint(reference_dir: Path, out: Path) -> Path:
    """``pose_transfer_tiny.safetensors`` -> ``out/{vae,unet_encoder,unet}.safetensors`` (prefix stripped)."""
    state = load_file(str(reference_dir / FIXTURES / "models/pose_transfer_tiny.safetensors"))
    for prefix in PREFIXES:
        part = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.split(".", 1)[0] == prefix}
        save_file(part, str(out / f"{prefix}.safetensors"))
    return out


class GivenIUV:
    """Stands in for DensePose: every pose image gets ``iuv`` (or None: nobody found)."""

    def __init__(self, iuv: np.ndarray | None) -> None:
        self.iuv = iuv

    def leffa_iuv(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        return [self.iuv for _ in images]


def fixture_image(reference_dir: Path, name: str) -> Image.Image:
    return Image.open(reference_dir / FIXTURES / "inputs" / name).convert("RGB")


def golden_pipeline(reference_dir: Path, tmp: Path, ref_acceleration: bool):
    """The pipeline on the fixture checkpoint (float32 CPU) with the fixture's IUV image as the pose condition."""
    from pipelines.leffa.networks import load_networks
    from pipelines.leffa.pipeline import LeffaPoseTransferPipeline
    from pipelines.leffa.safety import SafetyChecker

    source = WeightSource.tiny()
    networks = load_networks(source, checkpoint_dir=split_fixture_checkpoint(reference_dir, tmp))
    iuv = np.asarray(fixture_image(reference_dir, "densepose_iuv_192x256.png"))
    safety = SafetyChecker.load(source, networks.config, "cpu", networks.dtype)
    return LeffaPoseTransferPipeline(networks, GivenIUV(iuv), safety, ref_acceleration)  # type: ignore[arg-type]
