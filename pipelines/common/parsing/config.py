"""Configs of the SCHP (Self-Correction Human Parsing) AugmentCE2P parsers.

The real configs are the ResNet-101 networks CatVTON's AutoMasker runs (LIP 473², ATR 512²). The
tiny configs keep every branch and the odd/even input geometry but shrink depths and widths, so the
same code builds both. The reference goldens are full size only (a reduced depth would not shrink
the fixed-width PSP bottleneck), so there is no golden-prescribed reduced config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Dataset = Literal["lip", "atr"]

LIP_LABELS = (
    "Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat", "Socks", "Pants",
    "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg", "Left-shoe",
    "Right-shoe",
)  # fmt: skip
ATR_LABELS = (
    "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt",
    "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag", "Scarf",
)  # fmt: skip

# ImageNet statistics in BGR order. CatVTON feeds RGB arrays (np.array of a PIL image) through them;
# the checkpoints were trained on cv2 (BGR) input, and parity with CatVTON means keeping the mismatch.
NORMALIZE_MEAN = (0.406, 0.456, 0.485)
NORMALIZE_STD = (0.225, 0.224, 0.229)


@dataclass(frozen=True)
class SCHPConfig:
    """Hyper-parameters of one AugmentCE2P network and its input geometry."""

    dataset: Dataset
    num_classes: int
    input_size: tuple[int, int]  # (H, W) of the network input
    labels: tuple[str, ...]
    layers: tuple[int, int, int, int] = (3, 4, 23, 3)  # ResNet-101 bottleneck counts
    stem_width: int = 64  # deep stem: 3 -> w -> w -> 2w
    base_width: int = 64  # bottleneck planes of layer1; doubled per stage, expansion 4
    psp_width: int = 512  # PSP stage and bottleneck output width
    psp_bins: tuple[int, ...] = (1, 2, 3, 6)
    decoder_width: int = 256
    decoder_skip_width: int = 48
    edge_width: int = 256
    fusion_width: int = 256
    leaky_slope: float = 0.01
    bn_eps: float = 1e-5

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        return tuple(self.base_width * 4 * 2**i for i in range(4))  # type: ignore[return-value]


LIP = SCHPConfig("lip", 20, (473, 473), LIP_LABELS)
ATR = SCHPConfig("atr", 18, (512, 512), ATR_LABELS)

_TINY = dict(
    layers=(1, 1, 1, 1),
    stem_width=8,
    base_width=8,
    psp_width=16,
    decoder_width=16,
    decoder_skip_width=8,
    edge_width=8,
    fusion_width=16,
)
# Odd LIP side and even ATR side, like the real ones, so both rounding paths stay covered.
LIP_TINY = replace(LIP, input_size=(97, 97), **_TINY)
ATR_TINY = replace(ATR, input_size=(96, 96), **_TINY)

CONFIGS: dict[tuple[Dataset, bool], SCHPConfig] = {
    ("lip", False): LIP,
    ("atr", False): ATR,
    ("lip", True): LIP_TINY,
    ("atr", True): ATR_TINY,
}


def config_for(dataset: Dataset, tiny: bool = False) -> SCHPConfig:
    if dataset not in ("lip", "atr"):
        raise ValueError(f"unknown SCHP dataset {dataset!r}; expected 'lip' or 'atr'")
    return CONFIGS[(dataset, tiny)]
