"""The two facexlib networks PuLID's face preparation uses, as our own modules with facexlib's parameter names
(so ``detection_Resnet50_Final.pth`` and ``parsing_bisenet.pth`` load strictly), without the facexlib package
(which pins opencv-python and downloads weights at construction):

- ``RetinaFaceR50``: RetinaFace with a torchvision ResNet-50 body (layers 2-4), FPN, three SSH context
  modules and per-level class / box / 5-landmark heads (2 anchors per cell); ``detect`` decodes with the
  prior boxes (min sizes 16/32, 64/128, 256/512 at strides 8/16/32, variances 0.1/0.2), keeps scores above
  the threshold and applies NMS, on the BGR image minus (104, 117, 123) at its own size;
- ``BiSeNet``: BiSeNet face parsing (ResNet-18 context path, attention refinement, feature fusion), 19
  classes; ``forward`` returns the three logit maps at input size, the first one is the one used.
"""

from __future__ import annotations

from itertools import product
from math import ceil

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

# ---------------------------------------------------------------- RetinaFace-R50

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)


def _conv_bn(inp: int, oup: int, relu: bool, kernel: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(inp, oup, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(oup)]
    if relu:
        layers.append(nn.LeakyReLU(negative_slope=0.0, inplace=True))  # slope 0 at 256 channels (facexlib)
    return nn.Sequential(*layers)


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out_channels, True, kernel=1)
        self.output2 = _conv_bn(in_channels[1], out_channels, True, kernel=1)
        self.output3 = _conv_bn(in_channels[2], out_channels, True, kernel=1)
        self.merge1 = _conv_bn(out_channels, out_channels, True)
        self.merge2 = _conv_bn(out_channels, out_channels, True)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out1, out2, out3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        out2 = self.merge2(out2 + F.interpolate(out3, size=[out2.size(2), out2.size(3)], mode="nearest"))
        out1 = self.merge1(out1 + F.interpolate(out2, size=[out1.size(2), out1.size(3)], mode="nearest"))
        return [out1, out2, out3]


class SSH(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3X3 = _conv_bn(channels, channels // 2, False)
        self.conv5X5_1 = _conv_bn(channels, channels // 4, True)
        self.conv5X5_2 = _conv_bn(channels // 4, channels // 4, False)
        self.conv7X7_2 = _conv_bn(channels // 4, channels // 4, True)
        self.conv7x7_3 = _conv_bn(channels // 4, channels // 4, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = self.conv5X5_1(x)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(self.conv7X7_2(c5_1))], dim=1)
        return F.relu(out)


class _Head(nn.Module):
    def __init__(self, channels: int, per_anchor: int, anchors: int = 2) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(channels, anchors * per_anchor, kernel_size=(1, 1), stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.per_anchor)


class RetinaFaceR50(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None)
        self.body = IntermediateLayerGetter(resnet, {"layer2": 1, "layer3": 2, "layer4": 3})
        self.fpn = FPN((512, 1024, 2048), 256)
        self.ssh1, self.ssh2, self.ssh3 = SSH(256), SSH(256), SSH(256)
        self.ClassHead = nn.ModuleList([_Head(256, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(256, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(256, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(list(self.body(x).values()))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        boxes = torch.cat([self.BboxHead[i](f) for i, f in enumerate(feats)], dim=1)
        scores = torch.cat([self.ClassHead[i](f) for i, f in enumerate(feats)], dim=1)
        landmarks = torch.cat([self.LandmarkHead[i](f) for i, f in enumerate(feats)], dim=1)
        return boxes, F.softmax(scores, dim=-1), landmarks

    @torch.no_grad()
    def detect(self, img_bgr: np.ndarray, conf: float, nms: float) -> np.ndarray:
        """[N,15]: x1, y1, x2, y2, score, 5 x (x, y), best first (facexlib's ``detect_faces`` at origin size)."""
        device = next(self.parameters()).device
        image = torch.from_numpy(img_bgr.astype(np.float32).transpose(2, 0, 1)).unsqueeze(0).to(device)
        image = image - torch.tensor(BGR_MEAN, device=device).view(1, 3, 1, 1)
        height, width = image.shape[2:]
        loc, score, landm = self(image)
        priors = prior_boxes(height, width).to(device)
        boxes = (decode_boxes(loc[0], priors) * torch.tensor([width, height] * 2, device=device)).cpu().numpy()
        points = decode_landmarks(landm[0], priors) * torch.tensor([width, height] * 5, device=device)
        points, scores = points.cpu().numpy(), score[0, :, 1].cpu().numpy()
        keep = np.where(scores > conf)[0]
        boxes, points, scores = boxes[keep], points[keep], scores[keep]
        order = scores.argsort()[::-1]  # numpy's order (ties included), as facexlib
        dets = np.hstack((boxes[order], scores[order, None])).astype(np.float32, copy=False)
        kept = torchvision.ops.nms(torch.Tensor(dets[:, :4]), torch.Tensor(dets[:, 4]), nms).numpy()
        return np.concatenate((dets[kept], points[order][kept]), axis=1)


def prior_boxes(height: int, width: int) -> torch.Tensor:
    """[P,4] anchors (cx, cy, w, h) relative to the image, in facexlib's order."""
    anchors: list[float] = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        for i, j in product(range(ceil(height / step)), range(ceil(width / step))):
            for size in sizes:
                anchors += [(j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height]
    return torch.tensor(anchors).view(-1, 4)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    boxes = torch.cat(
        (
            priors[:, :2] + loc[:, :2] * VARIANCES[0] * priors[:, 2:],
            priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1]),
        ),
        1,
    )
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    return torch.cat([priors[:, :2] + pre[:, k : k + 2] * VARIANCES[0] * priors[:, 2:] for k in range(0, 10, 2)], 1)


# ---------------------------------------------------------------- BiSeNet


class ConvBNReLU(nn.Module):
    def __init__(self, in_chan: int, out_chan: int, ks: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, kernel_size=ks, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, in_chan: int, out_chan: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chan, out_chan, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chan)
        self.conv2 = nn.Conv2d(out_chan, out_chan, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chan)
        self.downsample = None
        if in_chan != out_chan or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chan, out_chan, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_chan)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    def __init__(self, in_chan: int, out_chan: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_chan, out_chan)
        self.conv_atten = nn.Conv2d(out_chan, out_chan, kernel_size=1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(F.avg_pool2d(feat, feat.size()[2:]))))
        return torch.mul(feat, atten)


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(F.avg_pool2d(feat32, feat32.size()[2:]))
        feat32_sum = self.arm32(feat32) + F.interpolate(avg, feat32.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up


class FeatureFusionModule(nn.Module):
    def __init__(self, in_chan: int, out_chan: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_chan, out_chan, ks=1, stride=1, padding=0)
        self.conv1 = nn.Conv2d(out_chan, out_chan // 4, kernel_size=1, stride=1, padding=0, bias=False)
        self.conv2 = nn.Conv2d(out_chan // 4, out_chan, kernel_size=1, stride=1, padding=0, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.avg_pool2d(feat, feat.size()[2:])))))
        return torch.mul(feat, atten) + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, in_chan: int, mid_chan: int, num_class: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_chan, mid_chan)
        self.conv_out = nn.Conv2d(mid_chan, num_class, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    def __init__(self, num_class: int = 19) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, num_class)
        self.conv_out16 = BiSeNetOutput(128, 64, num_class)
        self.conv_out32 = BiSeNetOutput(128, 64, num_class)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[2:]
        feat_res8, feat_cp8, feat_cp16 = self.cp(x)
        outs = (self.conv_out(self.ffm(feat_res8, feat_cp8)), self.conv_out16(feat_cp8), self.conv_out32(feat_cp16))
        return tuple(F.interpolate(o, size, mode="bilinear", align_corners=True) for o in outs)  # type: ignore[return-value]
