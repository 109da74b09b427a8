"""ResNet-50 + FPN backbone with detectron2's module names (``backbone.bottom_up.res2.0.conv1.norm.*``).

MSRA ResNet: FrozenBN after every conv, the stride of each stage's first block on its 1×1 conv1
(``STRIDE_IN_1X1``), stem conv7/2 + maxpool3/2. FPN: 1×1 laterals, nearest ×2 top-down, sum fusion,
3×3 outputs, p6 = maxpool(k1, s2) of p5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import FPN_LEVELS, FROZEN_BN_EPS, RESNET_BLOCKS, DensePoseConfig


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics; the four tensors are buffers, as in the checkpoint."""

    def __init__(self, num_features: int, eps: float = FROZEN_BN_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fused inference op, as detectron2 uses when no gradient is needed.
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )


class ConvNorm(nn.Conv2d):
    """A bias-free conv followed by FrozenBN held as ``.norm`` (detectron2's ``Conv2d(norm=...)``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.norm = FrozenBatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class BasicStem(nn.Module):
    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_channels, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    def __init__(self, cin: int, bottleneck: int, cout: int, stride: int) -> None:
        super().__init__()
        # Projection shortcut only where the channel count changes (first block of a stage).
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride) if cin != cout else None
        self.conv1 = ConvNorm(cin, bottleneck, 1, stride=stride)  # STRIDE_IN_1X1
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, stride=1, padding=1)
        self.conv3 = ConvNorm(bottleneck, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


class ResNet(nn.Module):
    """``bottom_up``: stem + res2..res5, returning the four stage outputs."""

    def __init__(self, cfg: DensePoseConfig) -> None:
        super().__init__()
        self.stem = BasicStem(cfg.stem_out_channels)
        cin = cfg.stem_out_channels
        self.stage_names = ("res2", "res3", "res4", "res5")
        self.out_channels: dict[str, int] = {}
        for i, (name, n_blocks) in enumerate(zip(self.stage_names, RESNET_BLOCKS[cfg.depth], strict=True)):
            bottleneck = cfg.res2_bottleneck_channels * 2**i
            cout = cfg.res2_out_channels * 2**i
            first_stride = 1 if i == 0 else 2
            blocks = []
            for b in range(n_blocks):
                blocks.append(BottleneckBlock(cin, bottleneck, cout, first_stride if b == 0 else 1))
                cin = cout
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels[name] = cout

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        outputs = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs


class FPN(nn.Module):
    """``backbone``: holds ``bottom_up`` and the ``fpn_lateral{2..5}`` / ``fpn_output{2..5}`` convs."""

    def __init__(self, cfg: DensePoseConfig) -> None:
        super().__init__()
        self.bottom_up = ResNet(cfg)
        ch = cfg.fpn_channels
        for stage in (2, 3, 4, 5):
            cin = self.bottom_up.out_channels[f"res{stage}"]
            self.add_module(f"fpn_lateral{stage}", nn.Conv2d(cin, ch, 1))
            self.add_module(f"fpn_output{stage}", nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        res = self.bottom_up(x)
        prev = self.fpn_lateral5(res["res5"])
        outs = {"p5": self.fpn_output5(prev)}
        for stage in (4, 3, 2):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = getattr(self, f"fpn_lateral{stage}")(res[f"res{stage}"]) + top_down
            outs[f"p{stage}"] = getattr(self, f"fpn_output{stage}")(prev)
        outs["p6"] = F.max_pool2d(outs["p5"], kernel_size=1, stride=2, padding=0)
        return {level: outs[level] for level in FPN_LEVELS}
