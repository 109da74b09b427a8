"""The DensePose branch: Panoptic-FPN decoder, 28×28 ROIAlign, 8-conv head, chart predictor.

Names follow detectron2 DensePose (``roi_heads.decoder.p4.2``, ``roi_heads.densepose_head.body_conv_fcn1``,
``roi_heads.densepose_predictor.index_uv_lowres``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import (
    DECODER_COMMON_STRIDE,
    DP_COARSE_CHANNELS,
    DP_DECONV_KERNEL,
    DP_NUM_STACKED_CONVS,
    DP_PATCHES,
    DP_POOLER_RESOLUTION,
    DP_UP_SCALE,
    FPN_STRIDES,
    ROI_LEVELS,
)
from .detector import roi_align_f32


class _ConvReLU(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


class _Upsample2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class Decoder(nn.Module):
    """Merges p2..p5 into one stride-4 map: per level [conv3×3+ReLU, ×2 bilinear] until stride 4, sum, 1×1.

    Sequential indices match detectron2 (convs at 0, 2, 4; upsampling in between), e.g. ``p5.4``.
    """

    def __init__(self, in_channels: int, conv_dims: int, out_channels: int) -> None:
        super().__init__()
        for level in ROI_LEVELS:
            stride = FPN_STRIDES[level]
            n_convs = max(1, int(math.log2(stride) - math.log2(DECODER_COMMON_STRIDE)))
            ops: list[nn.Module] = []
            for k in range(n_convs):
                ops.append(_ConvReLU(in_channels if k == 0 else conv_dims, conv_dims, 3, padding=1))
                if stride != DECODER_COMMON_STRIDE:
                    ops.append(_Upsample2x())
            self.add_module(level, nn.Sequential(*ops))
        self.predictor = nn.Conv2d(conv_dims, out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = None
        for level, feature in zip(ROI_LEVELS, features, strict=True):
            y = getattr(self, level)(feature)
            x = y if x is None else x + y
        return self.predictor(x)


class DensePoseHead(nn.Module):
    """``DensePoseV1ConvXHead``: 8 × (conv3×3 + ReLU)."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        for i in range(DP_NUM_STACKED_CONVS):
            self.add_module(f"body_conv_fcn{i + 1}", nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(DP_NUM_STACKED_CONVS):
            x = F.relu(getattr(self, f"body_conv_fcn{i + 1}")(x))
        return x


@dataclass
class ChartOutput:
    """DensePose predictor output for N boxes, 112×112 each (logits and raw U/V regressions)."""

    coarse_segm: torch.Tensor  # (N, 2, 112, 112)  foreground / background
    fine_segm: torch.Tensor  # (N, 25, 112, 112) background + 24 parts
    u: torch.Tensor  # (N, 25, 112, 112)
    v: torch.Tensor  # (N, 25, 112, 112)

    def __getitem__(self, index: slice | torch.Tensor) -> ChartOutput:
        return ChartOutput(self.coarse_segm[index], self.fine_segm[index], self.u[index], self.v[index])

    def __len__(self) -> int:
        return self.coarse_segm.shape[0]


class DensePosePredictor(nn.Module):
    """``DensePoseChartPredictor`` (confidences off): 4 ConvTranspose(k4, s2, p1), then bilinear ×2."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        pad = DP_DECONV_KERNEL // 2 - 1
        patches = DP_PATCHES + 1
        self.ann_index_lowres = nn.ConvTranspose2d(in_channels, DP_COARSE_CHANNELS, DP_DECONV_KERNEL, 2, pad)
        self.index_uv_lowres = nn.ConvTranspose2d(in_channels, patches, DP_DECONV_KERNEL, 2, pad)
        self.u_lowres = nn.ConvTranspose2d(in_channels, patches, DP_DECONV_KERNEL, 2, pad)
        self.v_lowres = nn.ConvTranspose2d(in_channels, patches, DP_DECONV_KERNEL, 2, pad)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=DP_UP_SCALE, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> ChartOutput:
        return ChartOutput(
            coarse_segm=self._up(self.ann_index_lowres(x)),
            fine_segm=self._up(self.index_uv_lowres(x)),
            u=self._up(self.u_lowres(x)),
            v=self._up(self.v_lowres(x)),
        )


def densepose_roi_align(decoder_out: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """ROIAlign 28×28 on the stride-4 decoder map; ``rois`` rows are (image index, x1, y1, x2, y2)."""
    return roi_align_f32(decoder_out, rois, DP_POOLER_RESOLUTION, 1.0 / DECODER_COMMON_STRIDE)
