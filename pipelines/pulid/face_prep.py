"""The pure image steps of PuLID's ID embedding (no networks): reference resize, 5-point alignment to the
FFHQ 512 template, parsing-based whitening, and the EVA-CLIP input.

Constants are the original's (``pulid_v1_constants.json``): the facexlib template and border colour, the
BiSeNet labels that become white, ImageNet and OpenAI-CLIP mean/std, and the 336 px bicubic resize
*without* antialias (torchvision 0.15/0.16 behaviour on tensors; ``antialias=True`` is the switch to
today's torchvision default).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import normalize, resize

REFERENCE_LONG_EDGE = 1024
ALIGNED_SIZE = 512
EVA_SIZE = 336
# facexlib FaceRestoreHelper's 512 px 5-point template (eyes, nose, mouth corners), x, y
FACE_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043],
     [313.08905, 371.15118]],
    dtype=np.float32,
)  # fmt: skip
BORDER_RGB = (132, 133, 135)  # facexlib's warpAffine border (135, 133, 132) is BGR
WHITENED_LABELS = (0, 7, 8, 9, 14, 15, 16, 18)  # background, ears, earring, neck, necklace, cloth, hat
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def resize_long_edge(img: np.ndarray, long_edge: int = REFERENCE_LONG_EDGE) -> np.ndarray:
    """Downscale (never upscale) so the long edge is ``long_edge``; sizes truncated as the original's ``int()``."""
    h, w = img.shape[:2]
    if max(h, w) <= long_edge:
        return img
    k = long_edge / max(h, w)
    return cv2.resize(img, (int(w * k), int(h * k)), interpolation=cv2.INTER_LANCZOS4)


def center_face(boxes: np.ndarray, height: int, width: int) -> int:
    """facexlib's ``only_center_face``: the box whose centre is closest to the image centre."""
    centres = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    dist = np.sum((centres - np.array([width / 2, height / 2])) ** 2, axis=1)
    return int(np.argmin(dist))


def align_face(img_rgb: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    """The 512x512 face crop: similarity transform (LMEDS) of the 5 landmarks onto the template."""
    matrix = cv2.estimateAffinePartial2D(landmarks5.astype(np.float32), FACE_TEMPLATE_512, method=cv2.LMEDS)[0]
    return cv2.warpAffine(
        img_rgb, matrix, (ALIGNED_SIZE, ALIGNED_SIZE), borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_RGB
    )


def to_tensor01(img_rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> [1,3,H,W] float32 in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(img_rgb.transpose(2, 0, 1))).float().unsqueeze(0) / 255.0


def parsing_input(face01: torch.Tensor) -> torch.Tensor:
    """BiSeNet's input: the [0,1] face, ImageNet-normalised."""
    return normalize(face01, IMAGENET_MEAN, IMAGENET_STD)


def to_gray(img: torch.Tensor) -> torch.Tensor:
    x = 0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3]
    return x.repeat(1, 3, 1, 1)


def whiten(face01: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Face features only: background, ears, neck, cloth, hat... white; the rest grey luminance.

    ``labels`` [B,1,H,W] is the parser's argmax.
    """
    background = torch.zeros_like(labels, dtype=torch.bool)
    for label in WHITENED_LABELS:
        background |= labels == label
    return torch.where(background, torch.ones_like(face01), to_gray(face01))


def eva_input(whitened: torch.Tensor, antialias: bool = False) -> torch.Tensor:
    """336 px bicubic (no antialias, as the original's torchvision), OpenAI-CLIP normalised."""
    small = resize(whitened, [EVA_SIZE, EVA_SIZE], InterpolationMode.BICUBIC, antialias=antialias)
    return normalize(small, CLIP_MEAN, CLIP_STD)
