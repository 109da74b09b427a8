"""``random_full`` DWPose: architecture-equivalent YOLOX-L and DWPose-l (RTMPose-l) graphs, random weights.

The real files are fixed ONNX exports (Megvii's ``yolox_l.onnx``; mmdeploy's ``dw-ll_ucoco_384.onnx``). Here
the same networks are written in PyTorch from their published architectures (YOLOX-L: CSPDarknet-53 with
Focus stem + PAFPN + decoupled head, depth/width 1.0; DWPose-l: CSPNeXt-l P5 backbone with channel attention
+ RTMCC head: 7x7 conv, ScaleNorm + linear, one gated attention unit, SimCC linear classifiers), seeded,
and exported to ONNX with the real signatures at load time, so GPU timings have the real compute. Their
exported sizes match the real files' (checked in tests). Detections from random weights are meaningless:
the detector starts from YOLOX's own prior (objectness and class biases at -log(99)), so it usually finds no
person and benchmarks should also time the two models on their own (benchmarks/dwpose_bench.py does).

This module imports torch; it is only imported for ``random_full``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from .pose import NUM_KEYPOINTS, POSE_INPUT_H, POSE_INPUT_W, SIMCC_SPLIT_RATIO

BN_EPS, BN_MOMENTUM = 1e-3, 0.03


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + SiLU: YOLOX ``BaseConv`` / mmcv ``ConvModule``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM),
            nn.SiLU(inplace=True),
        )


class SPP(nn.Module):
    """Spatial pyramid pooling bottleneck (max pools 5, 9, 13 at stride 1)."""

    def __init__(self, cin: int, cout: int, kernels: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = cin // 2
        self.conv1 = ConvBNAct(cin, hidden, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in kernels)
        self.conv2 = ConvBNAct(hidden * (len(kernels) + 1), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x, *(p(x) for p in self.pools)], dim=1))


# -- YOLOX-L ------------------------------------------------------------------------------------------


class DarkBottleneck(nn.Module):
    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels, 1)
        self.conv2 = ConvBNAct(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class YoloCSP(nn.Module):
    """YOLOX CSP layer: two 1x1 branches (one through ``n`` bottlenecks), concatenated, 1x1 out."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool = True) -> None:
        super().__init__()
        hidden = cout // 2
        self.conv1 = ConvBNAct(cin, hidden, 1)
        self.conv2 = ConvBNAct(cin, hidden, 1)
        self.conv3 = ConvBNAct(2 * hidden, cout, 1)
        self.blocks = nn.Sequential(*(DarkBottleneck(hidden, shortcut) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cat([self.blocks(self.conv1(x)), self.conv2(x)], dim=1))


class Focus(nn.Module):
    """Space-to-depth (2x2 pixel groups to channels), then a 3x3 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(cin * 4, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tl, tr = x[..., ::2, ::2], x[..., ::2, 1::2]
        bl, br = x[..., 1::2, ::2], x[..., 1::2, 1::2]
        return self.conv(torch.cat([tl, bl, tr, br], dim=1))


class YoloxL(nn.Module):
    """YOLOX-L, COCO-80, raw head output ``[N, 8400, 85]`` (decode left to the caller, as exported)."""

    def __init__(self, num_classes: int = 80, prior_prob: float = 0.01) -> None:
        super().__init__()
        c, d = 64, 3  # base width and depth at multiplier 1.0
        self.stem = Focus(3, c)
        self.dark2 = nn.Sequential(ConvBNAct(c, 2 * c, 3, 2), YoloCSP(2 * c, 2 * c, d))
        self.dark3 = nn.Sequential(ConvBNAct(2 * c, 4 * c, 3, 2), YoloCSP(4 * c, 4 * c, 3 * d))
        self.dark4 = nn.Sequential(ConvBNAct(4 * c, 8 * c, 3, 2), YoloCSP(8 * c, 8 * c, 3 * d))
        self.dark5 = nn.Sequential(
            ConvBNAct(8 * c, 16 * c, 3, 2), SPP(16 * c, 16 * c), YoloCSP(16 * c, 16 * c, d, shortcut=False)
        )
        # PAFPN
        self.lateral_conv0 = ConvBNAct(1024, 512, 1)
        self.c3_p4 = YoloCSP(1024, 512, d, shortcut=False)
        self.reduce_conv1 = ConvBNAct(512, 256, 1)
        self.c3_p3 = YoloCSP(512, 256, d, shortcut=False)
        self.bu_conv2 = ConvBNAct(256, 256, 3, 2)
        self.c3_n3 = YoloCSP(512, 512, d, shortcut=False)
        self.bu_conv1 = ConvBNAct(512, 512, 3, 2)
        self.c3_n4 = YoloCSP(1024, 1024, d, shortcut=False)
        # decoupled head per level
        self.stems = nn.ModuleList(ConvBNAct(ch, 256, 1) for ch in (256, 512, 1024))
        self.cls_convs = nn.ModuleList(nn.Sequential(ConvBNAct(256, 256, 3), ConvBNAct(256, 256, 3)) for _ in range(3))
        self.reg_convs = nn.ModuleList(nn.Sequential(ConvBNAct(256, 256, 3), ConvBNAct(256, 256, 3)) for _ in range(3))
        self.cls_preds = nn.ModuleList(nn.Conv2d(256, num_classes, 1) for _ in range(3))
        self.reg_preds = nn.ModuleList(nn.Conv2d(256, 4, 1) for _ in range(3))
        self.obj_preds = nn.ModuleList(nn.Conv2d(256, 1, 1) for _ in range(3))
        prior = -math.log((1 - prior_prob) / prior_prob)
        for conv in [*self.cls_preds, *self.obj_preds]:
            nn.init.constant_(conv.bias, prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self.dark3(self.dark2(self.stem(x)))
        x1 = self.dark4(x2)
        x0 = self.dark5(x1)
        fpn_out0 = self.lateral_conv0(x0)
        f_out0 = self.c3_p4(torch.cat([F.interpolate(fpn_out0, scale_factor=2.0, mode="nearest"), x1], 1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.c3_p3(torch.cat([F.interpolate(fpn_out1, scale_factor=2.0, mode="nearest"), x2], 1))
        pan_out1 = self.c3_n3(torch.cat([self.bu_conv2(pan_out2), fpn_out1], 1))
        pan_out0 = self.c3_n4(torch.cat([self.bu_conv1(pan_out1), fpn_out0], 1))
        levels = []
        for i, feat in enumerate((pan_out2, pan_out1, pan_out0)):
            feat = self.stems[i](feat)
            cls_feat, reg_feat = self.cls_convs[i](feat), self.reg_convs[i](feat)
            out = torch.cat(
                [
                    self.reg_preds[i](reg_feat),
                    self.obj_preds[i](reg_feat).sigmoid(),
                    self.cls_preds[i](cls_feat).sigmoid(),
                ],
                dim=1,
            )
            levels.append(out.flatten(start_dim=2))
        return torch.cat(levels, dim=2).permute(0, 2, 1)


# -- DWPose-l (RTMPose-l) -------------------------------------------------------------------------------


class ChannelAttention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.act = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act(self.fc(F.adaptive_avg_pool2d(x, 1)))


class CSPNeXtBlock(nn.Module):
    """3x3 conv then a depthwise-separable 5x5 conv, with identity."""

    def __init__(self, channels: int, add_identity: bool) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels, 3)
        self.depthwise = ConvBNAct(channels, channels, 5, groups=channels)
        self.pointwise = ConvBNAct(channels, channels, 1)
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(self.conv1(x)))
        return x + y if self.add_identity else y


class CSPNeXtLayer(nn.Module):
    def __init__(self, channels: int, n: int, add_identity: bool) -> None:
        super().__init__()
        mid = channels // 2
        self.main_conv = ConvBNAct(channels, mid, 1)
        self.short_conv = ConvBNAct(channels, mid, 1)
        self.blocks = nn.Sequential(*(CSPNeXtBlock(mid, add_identity) for _ in range(n)))
        self.attention = ChannelAttention(2 * mid)
        self.final_conv = ConvBNAct(2 * mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = torch.cat([self.blocks(self.main_conv(x)), self.short_conv(x)], dim=1)
        return self.final_conv(self.attention(merged))


class ScaleNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale, self.eps = dim**-0.5, eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class GatedAttentionUnit(nn.Module):
    """RTMCC self-attention GAU (no relative bias, no rotary encoding), with scaled residual."""

    def __init__(self, dim: int = 256, expansion: int = 2, s: int = 128) -> None:
        super().__init__()
        self.e, self.s = dim * expansion, s
        self.ln = ScaleNorm(dim)
        self.uv = nn.Linear(dim, 2 * self.e + s, bias=False)
        self.gamma = nn.Parameter(torch.rand(2, s))
        self.beta = nn.Parameter(torch.rand(2, s))
        self.o = nn.Linear(self.e, dim, bias=False)
        self.res_scale = nn.Parameter(torch.ones(dim))
        nn.init.xavier_uniform_(self.uv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v, base = torch.split(F.silu(self.uv(self.ln(x))), [self.e, self.e, self.s], dim=2)
        q, k = torch.unbind(base.unsqueeze(2) * self.gamma[None, None] + self.beta, dim=2)
        kernel = torch.square(F.relu(torch.bmm(q, k.permute(0, 2, 1)) / math.sqrt(self.s)))
        return x * self.res_scale + self.o(u * torch.bmm(kernel, v))


class DWPoseL(nn.Module):
    """CSPNeXt-l (P5, stride 32) + RTMCC head: ``[N, 3, 384, 288] -> simcc_x [N, 133, 576], simcc_y``."""

    STAGES = (
        (64, 128, 3, True, False),
        (128, 256, 6, True, False),
        (256, 512, 6, True, False),
        (512, 1024, 3, False, True),
    )

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, 32, 3, 2), ConvBNAct(32, 32, 3), ConvBNAct(32, 64, 3))
        stages = []
        for cin, cout, n, identity, spp in self.STAGES:
            layers = [ConvBNAct(cin, cout, 3, 2), *([SPP(cout, cout)] if spp else []), CSPNeXtLayer(cout, n, identity)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        feat_w, feat_h = POSE_INPUT_W // 32, POSE_INPUT_H // 32
        self.final_layer = nn.Conv2d(1024, NUM_KEYPOINTS, 7, padding=3)
        self.mlp = nn.Sequential(ScaleNorm(feat_w * feat_h), nn.Linear(feat_w * feat_h, hidden, bias=False))
        self.gau = GatedAttentionUnit(hidden)
        self.cls_x = nn.Linear(hidden, int(POSE_INPUT_W * SIMCC_SPLIT_RATIO), bias=False)
        self.cls_y = nn.Linear(hidden, int(POSE_INPUT_H * SIMCC_SPLIT_RATIO), bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.final_layer(self.stages(self.stem(x))).flatten(2)
        feats = self.gau(self.mlp(feats))
        return self.cls_x(feats), self.cls_y(feats)


# -- export ---------------------------------------------------------------------------------------------


def _randomise_norms(module: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics so the fused convs are not all plain rescalings."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.1, generator=generator)
            m.running_var.uniform_(0.5, 1.5, generator=generator)


def _export(module: nn.Module, shape: tuple[int, ...], inputs: list[str], outputs: list[str], dynamic: bool) -> bytes:
    buf = io.BytesIO()
    axes = {name: {0: "batch"} for name in inputs + outputs} if dynamic else None
    torch.onnx.export(
        module.eval(), (torch.zeros(shape),), buf, input_names=inputs, output_names=outputs,
        opset_version=17, dynamic_axes=axes, do_constant_folding=True, dynamo=False,
    )  # fmt: skip
    return buf.getvalue()


def _build(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = make()
    _randomise_norms(model, torch.Generator().manual_seed(seed))
    return model


def detector_onnx(seed: int = 0, dynamic_batch: bool = False) -> bytes:
    """YOLOX-L with seeded random weights as ONNX (static batch 1 like Megvii's export by default)."""
    return _export(_build(YoloxL, seed), (1, 3, 640, 640), ["images"], ["output"], dynamic_batch)


def pose_onnx(seed: int = 0) -> bytes:
    """DWPose-l with seeded random weights as ONNX (dynamic batch, like mmdeploy's export)."""
    model = _build(DWPoseL, seed + 1)
    graph = onnx.load_from_string(
        _export(model, (1, 3, POSE_INPUT_H, POSE_INPUT_W), ["input"], ["simcc_x", "simcc_y"], True)
    )
    for output in graph.graph.output:  # the exporter loses the static keypoint axis through bmm
        output.type.tensor_type.shape.dim[1].dim_value = NUM_KEYPOINTS
    return graph.SerializeToString()


CACHE_VERSION = 1


def cached(name: str, seed: int, build: Callable[[int], bytes]) -> bytes:
    """Exports take a minute on CPU: keep them under ``$FAL_ONPREM_CACHE`` (default ~/.cache/fal-onprem)."""
    root = Path(os.environ.get("FAL_ONPREM_CACHE") or Path.home() / ".cache" / "fal-onprem") / "dwpose-random-full"
    path = root / f"{name}-v{CACHE_VERSION}-torch{torch.__version__.split('+')[0]}-seed{seed}.onnx"
    if path.is_file():
        return path.read_bytes()
    data = build(seed)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError:  # a read-only home is fine: just no cache
        pass
    return data
