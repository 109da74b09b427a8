"""The AugmentCE2P network of SCHP (ResNet-101 + PSP context + parsing decoder + edge branch + fusion).

Module names follow the upstream checkpoints exactly (after stripping ``module.``), so the original
``.pth`` state dicts load with strict key matching and no rename table. Upstream normalises with
``InPlaceABNSync`` (BatchNorm followed by LeakyReLU(0.01), or by nothing when
``activation='none'``); :class:`ABN` is that layer for inference, with the same parameter names
(``weight``, ``bias``, ``running_mean``, ``running_var``; no ``num_batches_tracked``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SCHPConfig


class ABN(nn.Module):
    """Inference-mode BatchNorm plus optional LeakyReLU, named like ``inplace_abn.InPlaceABN``."""

    def __init__(self, channels: int, activation: bool = True, slope: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.activation = activation
        self.slope = slope
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return F.leaky_relu(x, self.slope) if self.activation else x


def conv_abn(cin: int, cout: int, cfg: SCHPConfig, kernel: int = 1) -> nn.Sequential:
    """``Sequential(conv, ABN)``: the head's building block (indices 0 and 1 in the checkpoints)."""
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
    return nn.Sequential(conv, ABN(cout, slope=cfg.leaky_slope, eps=cfg.bn_eps))


def upsample_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, cfg: SCHPConfig, downsample: bool) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = ABN(planes, activation=False, eps=cfg.bn_eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = ABN(planes, activation=False, eps=cfg.bn_eps)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = ABN(cout, activation=False, eps=cfg.bn_eps)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), ABN(cout, False, eps=cfg.bn_eps))
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + residual)


class PSPModule(nn.Module):
    """Pyramid pooling: pooled 1x1 conv branches, upsampled and concatenated with the input."""

    def __init__(self, cin: int, cfg: SCHPConfig) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(size), *conv_abn(cin, cfg.psp_width, cfg)) for size in cfg.psp_bins
        )
        self.bottleneck = conv_abn(cin + len(cfg.psp_bins) * cfg.psp_width, cfg.psp_width, cfg, kernel=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        priors = [upsample_to(stage(x), size) for stage in self.stages]
        return self.bottleneck(torch.cat([*priors, x], dim=1))


class EdgeModule(nn.Module):
    """Edge branch. Only its features feed the fusion; ``conv4``/``conv5`` (the edge map itself) are
    kept for strict checkpoint loading and for :meth:`edge_logits`."""

    def __init__(self, cins: tuple[int, int, int], cfg: SCHPConfig) -> None:
        super().__init__()
        w = cfg.edge_width
        self.conv1 = conv_abn(cins[0], w, cfg)
        self.conv2 = conv_abn(cins[1], w, cfg)
        self.conv3 = conv_abn(cins[2], w, cfg)
        self.conv4 = nn.Conv2d(w, 2, 3, padding=1, bias=True)
        self.conv5 = nn.Conv2d(6, 2, 1, bias=True)

    def features(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.conv1(x1), self.conv2(x2), self.conv3(x3)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
        size = (x1.shape[2], x1.shape[3])
        f1, f2, f3 = self.features(x1, x2, x3)
        return torch.cat([f1, upsample_to(f2, size), upsample_to(f3, size)], dim=1)

    def edge_logits(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
        size = (x1.shape[2], x1.shape[3])
        edges = [upsample_to(self.conv4(f), size) for f in self.features(x1, x2, x3)]
        return self.conv5(torch.cat(edges, dim=1))


class DecoderModule(nn.Module):
    """Parsing decoder: PSP context upsampled to 1/4 and fused with reduced layer1 features."""

    def __init__(self, context: int, low: int, cfg: SCHPConfig) -> None:
        super().__init__()
        w = cfg.decoder_width
        self.conv1 = conv_abn(context, w, cfg)
        self.conv2 = conv_abn(low, cfg.decoder_skip_width, cfg)
        self.conv3 = nn.Sequential(*conv_abn(w + cfg.decoder_skip_width, w, cfg), *conv_abn(w, w, cfg))
        self.conv4 = nn.Conv2d(w, cfg.num_classes, 1, bias=True)  # first-stage parsing; unused by CatVTON

    def forward(self, context: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        xt = upsample_to(self.conv1(context), (low.shape[2], low.shape[3]))
        return self.conv3(torch.cat([xt, self.conv2(low)], dim=1))


class SCHPNet(nn.Module):
    """AugmentCE2P. ``forward`` returns the fusion logits at 1/4 input resolution (what CatVTON uses)."""

    def __init__(self, cfg: SCHPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        s = cfg.stem_width
        self.conv1 = nn.Conv2d(3, s, 3, 2, padding=1, bias=False)
        self.bn1 = ABN(s, activation=False, eps=cfg.bn_eps)
        self.conv2 = nn.Conv2d(s, s, 3, 1, padding=1, bias=False)
        self.bn2 = ABN(s, activation=False, eps=cfg.bn_eps)
        self.conv3 = nn.Conv2d(s, 2 * s, 3, 1, padding=1, bias=False)
        self.bn3 = ABN(2 * s, activation=False, eps=cfg.bn_eps)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)

        c1, c2, c3, c4 = cfg.stage_channels
        b = cfg.base_width
        self.layer1 = self._make_layer(2 * s, b, cfg.layers[0], stride=1, dilation=1)
        self.layer2 = self._make_layer(c1, 2 * b, cfg.layers[1], stride=2, dilation=1)
        self.layer3 = self._make_layer(c2, 4 * b, cfg.layers[2], stride=2, dilation=1)
        self.layer4 = self._make_layer(c3, 8 * b, cfg.layers[3], stride=1, dilation=2)  # output stride 16

        self.context_encoding = PSPModule(c4, cfg)
        self.edge = EdgeModule((c1, c2, c3), cfg)
        self.decoder = DecoderModule(cfg.psp_width, c1, cfg)
        # Indices 0, 1, 3 like the checkpoint; index 2 was Dropout2d (identity at inference).
        self.fushion = nn.Sequential(
            *conv_abn(cfg.decoder_width + 3 * cfg.edge_width, cfg.fusion_width, cfg),
            nn.Identity(),
            nn.Conv2d(cfg.fusion_width, cfg.num_classes, 1, bias=True),
        )

    def _make_layer(self, cin: int, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        cout = planes * Bottleneck.expansion
        first = Bottleneck(cin, planes, stride, dilation, self.cfg, downsample=stride != 1 or cin != cout)
        rest = [Bottleneck(cout, planes, 1, dilation, self.cfg, downsample=False) for _ in range(blocks - 1)]
        return nn.Sequential(first, *rest)

    def stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every module output the reference fixtures record, and the logits."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x1 = self.layer1(self.maxpool(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        context = self.context_encoding(x4)
        decoded = self.decoder(context, x1)
        edge = self.edge(x1, x2, x3)
        logits = self.fushion(torch.cat([decoded, edge], dim=1))
        return {
            "layer1": x1,
            "layer2": x2,
            "layer3": x3,
            "layer4": x4,
            "context_encoding": context,
            "decoder": decoded,
            "edge": edge,
            "logits": logits,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)["logits"]
