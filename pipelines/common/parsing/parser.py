"""SCHP human parsing as CatVTON runs it: affine warp -> network -> upsample -> inverse warp -> argmax.

The geometry follows SCHP's ``SCHP.preprocess``/``transform_logits``: the whole image box is
centred, expanded to the network aspect and warped with ``cv2.warpAffine``; the 1/4-resolution
fusion logits are upsampled (bilinear, ``align_corners=True``) to the network input size, warped
back to the image per class channel (cv2, INTER_LINEAR, border 0) and argmax-ed. Images of any
sizes share one batch, since each is warped to the fixed network input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from pipelines.common.tensors import TORCH_DTYPES, configure_precision
from pipelines.contract import Dtype, WeightSource
from weights import locate

from . import checkpoint
from .config import NORMALIZE_MEAN, NORMALIZE_STD, Dataset, SCHPConfig, config_for
from .network import SCHPNet


def box_center_scale(width: int, height: int, aspect_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale of the full-image box ``[0, 0, w-1, h-1]``, expanded to the input aspect (W/H)."""
    box_w, box_h = float(width - 1), float(height - 1)
    center = np.array([box_w * 0.5, box_h * 0.5], dtype=np.float32)
    if box_w > aspect_ratio * box_h:
        box_h = box_w / aspect_ratio
    elif box_w < aspect_ratio * box_h:
        box_w = box_h * aspect_ratio
    return center, np.array([box_w, box_h], dtype=np.float32)


def affine_matrix(
    center: np.ndarray, scale: np.ndarray, output_hw: tuple[int, int], inverse: bool = False
) -> np.ndarray:
    """SCHP's ``get_affine_transform`` without rotation or shift: 2x3, image -> input (or back).

    Built from three float32 point pairs through ``cv2.getAffineTransform``, as the original, so the
    matrix is bit-identical and the warps match pixel for pixel.
    """
    dst_h, dst_w = output_hw
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + np.array([0.0, scale[0] * -0.5], dtype=np.float32)
    dst[0] = [(dst_w - 1) * 0.5, (dst_h - 1) * 0.5]
    dst[1] = dst[0] + np.array([0.0, (dst_w - 1) * -0.5], dtype=np.float32)
    for pts in (src, dst):  # third point: the first direction turned by 90 degrees
        direction = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-direction[1], direction[0]], dtype=np.float32)
    return cv2.getAffineTransform(dst, src) if inverse else cv2.getAffineTransform(src, dst)


@dataclass(frozen=True)
class ParserInput:
    """One image warped to the network input (uint8 HxWx3, RGB as given) and the way back."""

    warped: np.ndarray
    width: int
    height: int
    to_input: np.ndarray  # 2x3 affine, image -> network input
    to_image: np.ndarray  # 2x3 affine, network input -> image


def prepare_input(image: Image.Image | np.ndarray, cfg: SCHPConfig) -> ParserInput:
    """CPU preprocessing. ``image`` is RGB (PIL or HxWx3 uint8): the channel order is fed unchanged
    into BGR-ordered statistics, as CatVTON does."""
    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    in_h, in_w = cfg.input_size
    center, scale = box_center_scale(width, height, in_w / in_h)
    to_input = affine_matrix(center, scale, cfg.input_size)
    warped = cv2.warpAffine(
        rgb,
        to_input,
        (in_w, in_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    to_image = affine_matrix(center, scale, cfg.input_size, inverse=True)
    return ParserInput(warped, width, height, to_input, to_image)


def normalize(warped: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW: ``ToTensor`` (/255) then ``Normalize`` with the BGR statistics."""
    x = warped.permute(0, 3, 1, 2).to(torch.float32).div(255)
    mean = torch.tensor(NORMALIZE_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(NORMALIZE_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub(mean).div(std)


def _warp(src: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.warpAffine(
        src, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


@cache
def four_channel_warp_is_exact() -> bool:
    """Whether this cv2 warps a 4-channel float image exactly like 4 single-channel ones.

    SCHP warps each class channel alone; cv2's 4-channel path is several times faster and, in the
    versions checked, bit-identical (2- and 3-channel paths are not). Checked once at runtime so a
    different cv2 falls back to the original per-channel loop instead of silently drifting.
    """
    rng = np.random.default_rng(0)
    src = rng.standard_normal((37, 41, 4)).astype(np.float32)
    matrix = np.array([[1.37, 0.0, -5.25], [0.0, 1.37, 3.5]])
    grouped = _warp(src, matrix, 53, 61)
    single = np.stack([_warp(np.ascontiguousarray(src[:, :, i]), matrix, 53, 61) for i in range(4)], axis=2)
    return bool(np.array_equal(grouped, single))


def labels_in_image(upsampled: np.ndarray, inp: ParserInput) -> np.ndarray:
    """Input-size logits (C,H,W float32) -> uint8 label map in image space (inverse warp, argmax)."""
    classes = upsampled.shape[0]
    hwc = upsampled.transpose(1, 2, 0)
    if four_channel_warp_is_exact():
        groups = []
        for start in range(0, classes, 4):
            group = np.zeros((*hwc.shape[:2], 4), np.float32)  # the last group is zero-padded
            group[:, :, : min(4, classes - start)] = hwc[:, :, start : start + 4]
            groups.append(_warp(group, inp.to_image, inp.width, inp.height))
        warped = np.concatenate(groups, axis=2)[:, :, :classes]
    else:
        channels = [_warp(np.ascontiguousarray(c), inp.to_image, inp.width, inp.height) for c in upsampled]
        warped = np.stack(channels, axis=2)
    # Outside the warped area every channel is 0 and argmax keeps the first: Background.
    return np.argmax(warped, axis=2).astype(np.uint8)


@cache
def _postprocess_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="schp-post")


class HumanParser:
    """One SCHP parser (LIP or ATR) on a device. Call it with a list of RGB images."""

    def __init__(
        self, net: SCHPNet, device: str | torch.device, dtype: Dtype = "float32", channels_last: bool = False
    ) -> None:
        self.config = net.cfg
        self.device = torch.device(device)
        self.dtype = TORCH_DTYPES[dtype]
        # NHWC often runs faster with cuDNN in half precision; results differ only by float rounding.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.eval().to(self.device, self.dtype, memory_format=self.memory_format)

    @classmethod
    def load(
        cls,
        dataset: Dataset,
        source: WeightSource,
        device: str = "cpu",
        dtype: Dtype = "float32",
        channels_last: bool = False,
    ) -> HumanParser:
        """Build the parser from a WeightSource: converted safetensors (real) or recipe weights.
        float32 on CUDA turns TF32 off (``configure_precision``)."""
        configure_precision(device, dtype)
        cfg = config_for(dataset, tiny=source.kind == "tiny")
        if source.kind == "real":
            path = locate(checkpoint.MANIFEST_PIPELINE, dataset, source.weights_dir)  # or MissingWeights
            state = load_file(str(path))
            with torch.device("meta"):
                net = SCHPNet(cfg)
        else:
            net = SCHPNet(cfg)
            tag = checkpoint.recipe_tag(dataset, source.kind == "tiny", source.seed)
            state = checkpoint.strip_prefix(checkpoint.random_checkpoint(net, tag))
        checkpoint.load_strict(net, state)
        return cls(net, device, dtype, channels_last)

    def prepare(self, image: Image.Image | np.ndarray) -> ParserInput:
        return prepare_input(image, self.config)

    @torch.inference_mode()
    def upsampled_logits(self, inputs: Sequence[ParserInput]) -> torch.Tensor:
        """Network logits upsampled to the input size, float32 on the device, one row per input."""
        warped = torch.from_numpy(np.stack([inp.warped for inp in inputs])).to(self.device)
        x = normalize(warped).to(self.dtype).contiguous(memory_format=self.memory_format)
        logits = self.net(x).float()
        return F.interpolate(logits, size=self.config.input_size, mode="bilinear", align_corners=True)

    def parse(self, inputs: Sequence[ParserInput]) -> list[np.ndarray]:
        """Label maps (uint8 HxW, image space) of prepared inputs, run as one batch."""
        if not inputs:
            return []
        upsampled = self.upsampled_logits(inputs).cpu().numpy()
        if len(inputs) == 1:
            return [labels_in_image(upsampled[0], inputs[0])]
        # cv2 and numpy release the GIL: the per-item inverse warps run side by side.
        return list(_postprocess_pool().map(labels_in_image, upsampled, inputs))

    def __call__(self, images: Sequence[Image.Image | np.ndarray]) -> list[np.ndarray]:
        return self.parse([self.prepare(image) for image in images])
