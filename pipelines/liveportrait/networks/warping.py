"""W — warping network: dense motion from implicit keypoints, then warp F's feature volume.

Coordinates follow the original: (x, y, z) over (W, H, D), normalised to [-1, 1] as
``2·i/(n−1) − 1``; grid_sample is trilinear with ``align_corners=False`` and zero padding. The
background (identity) motion comes first, then one motion per keypoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DownBlock3d, Network, SameBlock2d, UpBlock3d
from .configs import DenseMotionConfig, WarpingConfig

KP_VARIANCE = 0.01


def coordinate_grid(d: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Identity grid [d, h, w, 3] holding (x, y, z) in [-1, 1], in ``like``'s dtype and device."""

    def axis(n: int) -> torch.Tensor:
        return 2 * (torch.arange(n, dtype=like.dtype, device=like.device) / (n - 1)) - 1

    z, y, x = torch.meshgrid(axis(d), axis(h), axis(w), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def keypoint_gaussians(kp: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Gaussian heat-maps of keypoints [B,K,3] on grid [d,h,w,3] -> [B,K,d,h,w]."""
    diff = grid[None, None] - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * diff.pow(2).sum(-1) / KP_VARIANCE)


class Hourglass3d(nn.Module):
    """3-D U-Net; keys ``encoder.down_blocks.*``, ``decoder.up_blocks.*``, ``decoder.conv/norm``."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()

        def width(i: int) -> int:
            return min(max_features, block_expansion * 2**i)

        self.encoder = nn.Module()
        self.encoder.down_blocks = nn.ModuleList(
            DownBlock3d(in_features if i == 0 else width(i), width(i + 1)) for i in range(num_blocks)
        )
        self.decoder = nn.Module()
        self.decoder.up_blocks = nn.ModuleList(
            UpBlock3d((1 if i == num_blocks - 1 else 2) * width(i + 1), width(i)) for i in reversed(range(num_blocks))
        )
        self.out_filters = block_expansion + in_features
        self.decoder.conv = nn.Conv3d(self.out_filters, self.out_filters, 3, padding=1)
        self.decoder.norm = nn.BatchNorm3d(self.out_filters, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for block in self.encoder.down_blocks:
            skips.append(block(skips[-1]))
        out = skips.pop()
        for block in self.decoder.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.decoder.norm(self.decoder.conv(out)))


class DenseMotionNetwork(nn.Module):
    def __init__(self, cfg: DenseMotionConfig, num_kp: int, feature_channel: int, occlusion: bool) -> None:
        super().__init__()
        self.num_kp = num_kp
        in_features = (num_kp + 1) * (cfg.compress + 1)
        self.hourglass = Hourglass3d(cfg.block_expansion, in_features, cfg.num_blocks, cfg.max_features)
        out = self.hourglass.out_filters
        self.mask = nn.Conv3d(out, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, cfg.compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(cfg.compress, affine=True)
        self.occlusion = nn.Conv2d(out * cfg.reshape_depth, 1, kernel_size=7, padding=3) if occlusion else None

    def forward(
        self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        b, _, d, h, w = feature.shape
        k1 = self.num_kp + 1
        feature = F.relu(self.norm(self.compress(feature)))
        grid = coordinate_grid(d, h, w, kp_source)

        # Motions that carry each driving point back to its source point; identity first.
        per_kp = grid[None, None] - kp_driving[:, :, None, None, None, :] + kp_source[:, :, None, None, None, :]
        motions = torch.cat([grid.expand(b, 1, d, h, w, 3), per_kp], dim=1)  # [B,K+1,d,h,w,3]

        repeated = feature[:, None].expand(b, k1, *feature.shape[1:]).reshape(b * k1, -1, d, h, w)
        deformed = F.grid_sample(repeated, motions.reshape(b * k1, d, h, w, 3), align_corners=False)
        deformed = deformed.view(b, k1, -1, d, h, w)

        heat = keypoint_gaussians(kp_driving, grid) - keypoint_gaussians(kp_source, grid)
        heat = torch.cat([heat.new_zeros(b, 1, d, h, w), heat], dim=1)[:, :, None]
        prediction = self.hourglass(torch.cat([heat, deformed], dim=2).view(b, -1, d, h, w))

        mask = torch.softmax(self.mask(prediction), dim=1)  # [B,K+1,d,h,w]
        deformation = (motions * mask[..., None]).sum(dim=1)  # [B,d,h,w,3]
        result = {"deformation": deformation}
        if self.occlusion is not None:
            result["occlusion_map"] = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)))
        return result


class WarpingNetwork(Network):
    """``forward(feature_3d, kp_driving, kp_source)`` -> dict(out, deformation, occlusion_map).

    Inputs of any float dtype are cast to the network's; outputs are float32.
    """

    def __init__(self, cfg: WarpingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dense_motion_network = DenseMotionNetwork(
            cfg.dense_motion, cfg.num_kp, cfg.reshape_channel, cfg.estimate_occlusion_map
        )
        self.third = SameBlock2d(cfg.max_features, cfg.out_channels, lrelu=True)
        self.fourth = nn.Conv2d(cfg.out_channels, cfg.out_channels, kernel_size=1)

    def forward(
        self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        dtype = self.param_dtype()
        feature_3d, kp_driving, kp_source = (t.to(dtype) for t in (feature_3d, kp_driving, kp_source))
        with self.autocast():
            motion = self.dense_motion_network(feature_3d, kp_driving, kp_source)
            out = F.grid_sample(feature_3d, motion["deformation"], align_corners=False)
            b, c, d, h, w = out.shape
            out = self.fourth(self.third(out.view(b, c * d, h, w)))
            occlusion = motion.get("occlusion_map")
            if occlusion is not None:
                out = out * occlusion
        return {
            "out": out.float(),
            "deformation": motion["deformation"].float(),
            "occlusion_map": None if occlusion is None else occlusion.float(),
        }
