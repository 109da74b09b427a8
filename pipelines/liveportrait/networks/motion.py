"""M — motion extractor: a ConvNeXt-V2 backbone whose heads give canonical keypoints, head pose
bins, translation, expression deltas and scale. Key names follow the checkpoint (``detector.*``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Network
from .configs import MotionConfig

MOTION_KEYS = ("kp", "exp", "pitch", "yaw", "roll", "t", "scale")


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (ConvNeXt stem / downsamplers)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt-V2) on channels-last input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    def __init__(self, cfg: MotionConfig) -> None:
        super().__init__()
        dims = cfg.dims
        stem = nn.Sequential(nn.Conv2d(cfg.in_chans, dims[0], 4, stride=4), ChannelsFirstLayerNorm(dims[0]))
        downs = [
            nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
            for i in range(len(dims) - 1)
        ]
        self.downsample_layers = nn.ModuleList([stem, *downs])
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtV2Block(dim) for _ in range(depth)))
            for dim, depth in zip(dims, cfg.depths, strict=True)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.fc_kp = nn.Linear(dims[-1], 3 * cfg.num_kp)
        self.fc_scale = nn.Linear(dims[-1], 1)
        self.fc_pitch = nn.Linear(dims[-1], cfg.num_bins)
        self.fc_yaw = nn.Linear(dims[-1], cfg.num_bins)
        self.fc_roll = nn.Linear(dims[-1], cfg.num_bins)
        self.fc_t = nn.Linear(dims[-1], 3)
        self.fc_exp = nn.Linear(dims[-1], 3 * cfg.num_kp)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        x = self.norm(x.mean((-2, -1)))
        return {key: getattr(self, f"fc_{key}")(x) for key in MOTION_KEYS}


class MotionExtractor(Network):
    """Image [B,3,256,256] -> raw heads: kp/exp [B,3K], pitch/yaw/roll [B,bins], t [B,3], scale [B,1]."""

    def __init__(self, cfg: MotionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.detector = ConvNeXtV2(cfg)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Any float input; heads are returned as float32."""
        with self.autocast():
            out = self.detector(image.to(self.param_dtype()))
        return {k: v.float() for k, v in out.items()}


def bins_to_degrees(bins: torch.Tensor) -> torch.Tensor:
    """Expected angle of the pose-bin logits [..., 66]: ``softmax · [0..65] · 3 − 97.5`` degrees."""
    idx = torch.arange(bins.shape[-1], dtype=torch.float32, device=bins.device)
    prob = torch.softmax(bins.float(), dim=-1)
    return (prob * idx).sum(-1) * 3 - 97.5
