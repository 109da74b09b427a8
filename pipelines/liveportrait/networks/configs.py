"""Network configurations of LivePortrait, as plain data.

``REAL`` is the human model of ``KwaiVGI/LivePortrait`` (``src/config/models.yaml``): the sizes the
released checkpoints need. ``TINY`` keeps every spatial size (256² in, 512² out, 64² feature volume)
and the 21 keypoints, so the pipeline code path is unchanged, but uses narrow channels (CPU tests).
``FIXTURES`` are the reduced configs of the reference fixtures (``fixtures_index.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class AppearanceConfig:
    """F: image [B,3,256,256] -> feature volume [B, reshape_channel, reshape_depth, 64, 64]."""

    image_channel: int = 3
    block_expansion: int = 64
    num_down_blocks: int = 2
    max_features: int = 512
    reshape_channel: int = 32
    reshape_depth: int = 16
    num_resblocks: int = 6


@dataclass(frozen=True)
class MotionConfig:
    """M: ConvNeXt-V2 backbone with keypoint / pose / expression heads."""

    num_kp: int = 21
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    num_bins: int = 66
    in_chans: int = 3


@dataclass(frozen=True)
class DenseMotionConfig:
    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    reshape_depth: int = 16
    compress: int = 4


@dataclass(frozen=True)
class WarpingConfig:
    """W: warps F's volume by the keypoint motion, returns a 2-D feature map for G."""

    num_kp: int = 21
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    reshape_channel: int = 32
    estimate_occlusion_map: bool = True
    dense_motion: DenseMotionConfig = field(default_factory=DenseMotionConfig)

    @property
    def out_channels(self) -> int:
        return self.block_expansion * 2**self.num_down_blocks


@dataclass(frozen=True)
class SpadeConfig:
    """G: SPADE decoder. ``spade_hidden`` is hard-coded to 128 upstream; only TINY lowers it."""

    upscale: int = 2
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    out_channels: int = 64
    spade_hidden: int = 128

    @property
    def in_channels(self) -> int:
        return min(self.max_features, self.block_expansion * 2**self.num_down_blocks)


@dataclass(frozen=True)
class MLPConfig:
    input_size: int
    hidden_sizes: tuple[int, ...]
    output_size: int


@dataclass(frozen=True)
class StitchingConfig:
    """S: the stitching MLP and the lip / eye retargeting MLPs (sizes fixed by 21 keypoints)."""

    stitching: MLPConfig = MLPConfig(126, (128, 128, 64), 65)
    lip: MLPConfig = MLPConfig(65, (128, 128, 64), 63)
    eye: MLPConfig = MLPConfig(66, (256, 256, 128, 128, 64), 63)


@dataclass(frozen=True)
class NetworksConfig:
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    warping: WarpingConfig = field(default_factory=WarpingConfig)
    spade: SpadeConfig = field(default_factory=SpadeConfig)
    stitching: StitchingConfig = field(default_factory=StitchingConfig)

    def check(self) -> NetworksConfig:
        """Raise ValueError unless the five networks chain together (F -> W -> G, M -> W)."""
        f, w, g, m = self.appearance, self.warping, self.spade, self.motion
        problems = []
        if f.max_features != f.reshape_channel * f.reshape_depth:
            problems.append("appearance.max_features must equal reshape_channel * reshape_depth")
        if w.reshape_channel != f.reshape_channel:
            problems.append("warping.reshape_channel must equal appearance.reshape_channel")
        if w.dense_motion.reshape_depth != f.reshape_depth:
            problems.append("warping.dense_motion.reshape_depth must equal appearance.reshape_depth")
        if w.max_features != f.max_features:
            problems.append("warping.max_features must equal appearance.max_features")
        if g.in_channels != w.out_channels:
            problems.append("spade in_channels must equal warping out_channels")
        if m.num_kp != w.num_kp:
            problems.append("motion.num_kp must equal warping.num_kp")
        if problems:
            raise ValueError("; ".join(problems))
        return self


REAL = NetworksConfig().check()

TINY = NetworksConfig(
    # depth 2 and compress 1 keep W's 7x7x7 mask conv cheap: its input width is fixed by 21 keypoints
    appearance=AppearanceConfig(block_expansion=8, max_features=8, reshape_channel=4, reshape_depth=2, num_resblocks=1),
    motion=MotionConfig(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)),
    warping=WarpingConfig(
        block_expansion=2,
        max_features=8,
        reshape_channel=4,
        dense_motion=DenseMotionConfig(block_expansion=4, max_features=16, num_blocks=3, reshape_depth=2, compress=1),
    ),
    spade=SpadeConfig(block_expansion=2, max_features=8, out_channels=8, spade_hidden=8),
    stitching=StitchingConfig(
        stitching=MLPConfig(126, (16, 16), 65),
        lip=MLPConfig(65, (16, 16), 63),
        eye=MLPConfig(66, (16, 16), 63),
    ),
).check()

# Configs the reference fixtures were generated with (fixtures_index.json); F and S are full size.
FIXTURES = NetworksConfig(
    motion=MotionConfig(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128)),
    warping=WarpingConfig(
        block_expansion=16,
        max_features=128,
        reshape_channel=16,
        dense_motion=DenseMotionConfig(block_expansion=8, max_features=64, num_blocks=3, reshape_depth=8, compress=2),
    ),
    spade=replace(SpadeConfig(), block_expansion=4, max_features=16),
)  # not a chain: each fixture exercises one module alone

CONFIGS = {"real": REAL, "tiny": TINY}
