"""Conv building blocks shared by the appearance extractor and the warping network.

Attribute names (``conv``, ``norm``, ``conv1``...) are the checkpoint's key names.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class Network(nn.Module):
    """Base of the top-level networks F, M, W, G.

    Inputs of any float dtype are cast to the parameters' dtype; outputs are float32. When the loader
    sets ``autocast_dtype`` (float16 / bfloat16 on GPU) the forward pass runs under ``torch.autocast``
    with float32 weights, as upstream LivePortrait does (norms, softmax, exp and grid sampling then
    stay float32, which keeps the warp far more accurate than casting the weights; see precision.py).
    """

    autocast_dtype: torch.dtype | None = None

    def param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(next(self.parameters()).device.type, dtype=self.autocast_dtype)


class SameBlock2d(nn.Module):
    """Conv + BatchNorm + ReLU (or LeakyReLU 0.01), same resolution."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, lrelu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(out_features, affine=True)
        self.lrelu = lrelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.leaky_relu(x, 0.01) if self.lrelu else F.relu(x)


class DownBlock2d(nn.Module):
    """Conv3x3 + BatchNorm + ReLU + 2x average pooling."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class DownBlock3d(nn.Module):
    """Conv3x3x3 + BatchNorm + ReLU + average pooling over H and W only."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, 3, padding=1)
        self.norm = nn.BatchNorm3d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        # (1,2,2) 3-D pooling as 2-D pooling over merged C·D: the same numbers, and 2-D pooling
        # also has half-precision CPU kernels.
        b, c, d, h, w = x.shape
        return F.avg_pool2d(x.reshape(b, c * d, h, w), 2).view(b, c, d, h // 2, w // 2)


class UpBlock3d(nn.Module):
    """Nearest upsampling of H and W + Conv3x3x3 + BatchNorm + ReLU."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, 3, padding=1)
        self.norm = nn.BatchNorm3d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1, 2, 2))
        return F.relu(self.norm(self.conv(x)))


class ResBlock3d(nn.Module):
    """Pre-activation residual block: BN-ReLU-conv-BN-ReLU-conv + skip."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(features, features, 3, padding=1)
        self.conv2 = nn.Conv3d(features, features, 3, padding=1)
        self.norm1 = nn.BatchNorm3d(features, affine=True)
        self.norm2 = nn.BatchNorm3d(features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x
