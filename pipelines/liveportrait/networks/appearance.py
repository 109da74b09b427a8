"""F — appearance feature extractor: source image -> 3-D feature volume ``f_s``."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .blocks import DownBlock2d, Network, ResBlock3d, SameBlock2d
from .configs import AppearanceConfig


class AppearanceFeatureExtractor(Network):
    """RGB in [0,1] [B,3,256,256] -> [B, reshape_channel, reshape_depth, 64, 64]."""

    def __init__(self, cfg: AppearanceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.first = SameBlock2d(cfg.image_channel, cfg.block_expansion)
        widths = [min(cfg.max_features, cfg.block_expansion * 2**i) for i in range(cfg.num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList(DownBlock2d(a, b) for a, b in itertools.pairwise(widths))
        self.second = nn.Conv2d(widths[-1], cfg.max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(cfg.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(cfg.reshape_channel))

    def forward(self, source_image: torch.Tensor) -> torch.Tensor:
        """Any float input; the volume is returned as float32."""
        with self.autocast():
            out = self.first(source_image.to(self.param_dtype()))
            for block in self.down_blocks:
                out = block(out)
            out = self.second(out)
            b, _, h, w = out.shape
            volume = out.view(b, self.cfg.reshape_channel, self.cfg.reshape_depth, h, w)
            return self.resblocks_3d(volume).float()
