"""G — SPADE decoder: warped 2-D feature map -> RGB image in [0, 1] at 2x the feature-map size x4.

The residual-block convolutions are spectrally normalised. Their parameters are stored like
``torch.nn.utils.spectral_norm`` does (``weight_orig``, ``weight_u``, ``weight_v``); at inference the
kernel is ``weight_orig / sigma`` with ``sigma = u · (W v)`` and no power iteration (eval semantics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Network
from .configs import SpadeConfig


class SpectralNormConv2d(nn.Module):
    """Conv2d whose kernel is divided by the stored spectral-norm estimate."""

    def __init__(self, fin: int, fout: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.weight_orig = nn.Parameter(torch.empty(fout, fin, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(fout)) if bias else None
        self.register_buffer("weight_u", torch.empty(fout))
        self.register_buffer("weight_v", torch.empty(fin * kernel_size * kernel_size))
        if self.weight_orig.device.type != "meta":
            nn.init.kaiming_uniform_(self.weight_orig, a=5**0.5)
            self.power_iteration_(20)

    @torch.no_grad()
    def power_iteration_(self, steps: int, generator: torch.Generator | None = None) -> None:
        """Set ``weight_u/weight_v`` to the top singular pair of ``weight_orig`` (random init only)."""
        mat = self.weight_orig.detach().flatten(1).float()
        v = torch.randn(mat.shape[1], generator=generator).to(mat.device)
        u = torch.zeros(mat.shape[0], device=mat.device)
        for _ in range(steps):
            u = F.normalize(mat @ v, dim=0, eps=1e-12)
            v = F.normalize(mat.t() @ u, dim=0, eps=1e-12)
        self.weight_u.copy_(u)
        self.weight_v.copy_(v)

    def weight(self) -> torch.Tensor:
        with torch.autocast(self.weight_orig.device.type, enabled=False):  # sigma in float32
            mat = self.weight_orig.flatten(1).float()
            sigma = torch.dot(self.weight_u.float(), mat @ self.weight_v.float())
            return (self.weight_orig.float() / sigma).to(self.weight_orig.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


class SPADE(nn.Module):
    """``InstanceNorm(x) · (1 + γ(seg)) + β(seg)``, with seg resized (nearest) to x."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        normalized = F.instance_norm(x, eps=1e-5)
        actv = self.mlp_shared(F.interpolate(seg, size=x.shape[2:], mode="nearest"))
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int) -> None:
        super().__init__()
        fmiddle = min(fin, fout)
        self.conv_0 = SpectralNormConv2d(fin, fmiddle, 3)
        self.conv_1 = SpectralNormConv2d(fmiddle, fout, 3)
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.norm_1 = SPADE(fmiddle, label_nc, hidden)
        self.learned_shortcut = fin != fout
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, 1, bias=False)
            self.norm_s = SPADE(fin, label_nc, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return shortcut + dx


class SPADEDecoder(Network):
    """Feature [B,C,64,64] -> image [B,3,512,512] (full size); C = ``cfg.in_channels``."""

    def __init__(self, cfg: SpadeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, hidden = cfg.in_channels, cfg.spade_hidden
        self.fc = nn.Conv2d(c, 2 * c, 3, padding=1)
        for i in range(6):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * c, 2 * c, c, hidden))
        self.up_0 = SPADEResnetBlock(2 * c, c, c, hidden)
        self.up_1 = SPADEResnetBlock(c, cfg.out_channels, c, hidden)
        if cfg.upscale is None or cfg.upscale <= 1:
            self.conv_img = nn.Conv2d(cfg.out_channels, 3, 3, padding=1)
        else:
            self.conv_img = nn.Sequential(
                nn.Conv2d(cfg.out_channels, 3 * 4, 3, padding=1), nn.PixelShuffle(upscale_factor=2)
            )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """Any float input; the image is returned as float32."""
        seg = feature = feature.to(self.param_dtype())
        with self.autocast():
            x = self.fc(feature)
            for i in range(6):
                x = getattr(self, f"G_middle_{i}")(x, seg)
            x = self.up_0(F.interpolate(x, scale_factor=2), seg)
            x = self.up_1(F.interpolate(x, scale_factor=2), seg)
            return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2))).float()
