"""Face-aligned cropping and paste-back (LivePortrait's cropper maths, numpy + OpenCV).

A crop is a similarity transform ``M_o2c`` from the original image to a ``dsize`` square, built from
face landmarks (106 insightface points or the 203 LivePortrait points): the eye-midpoint → lip-centre
direction becomes the vertical axis, the landmark box is squared and scaled by ``scale``, and the centre
is shifted by ``vx_ratio``/``vy_ratio`` times the crop size along the face axes.

Upstream deviations (deliberate, see the pipeline README):
- upstream ``crop_image()`` accepts ``vx_ratio`` but never forwards it, so it is always 0 there; here it
  is applied as documented ("horizontal offset ratio"). With the default 0 the results are identical.
- upstream pastes the 512 px generator output back with ``M_c2o``, which maps *dsize* pixels, so any
  ``dsize != 512`` mis-registers the face and the mask. ``paste_back`` composes the 512 → dsize scaling
  into the warp, which is exact for 512 and correct for every other size.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import acos, cos, sin

import cv2
import numpy as np

DTYPE = np.float32
GENERATOR_SIZE = 512  # the SPADE generator always outputs 512 x 512
NETWORK_INPUT_SIZE = 256  # F and M take 256 x 256


@dataclass(frozen=True)
class FaceRect:
    """A rotated square around a face: centre (x, y), side length (w, h) and angle in radians."""

    center: np.ndarray
    size: np.ndarray
    angle: float


@dataclass(frozen=True)
class Crop:
    image: np.ndarray  # dsize x dsize x 3 uint8, RGB
    M_o2c: np.ndarray  # 3x3 float32, original -> crop
    M_c2o: np.ndarray  # 3x3 float32, crop -> original
    dsize: int


def eye_lip_axis_points(pts: np.ndarray) -> np.ndarray:
    """(eye midpoint, lip centre) from 106 insightface or 203 LivePortrait landmarks, as a 2x2 array."""
    if pts.shape[0] == 106:
        left_eye, right_eye = pts[[33, 35, 40, 39]].mean(0), pts[[87, 89, 94, 93]].mean(0)
        lip = (pts[52] + pts[61]) / 2
    elif pts.shape[0] == 203:
        left_eye, right_eye = pts[[0, 6, 12, 18]].mean(0), pts[[24, 30, 36, 42]].mean(0)
        lip = (pts[48] + pts[66]) / 2
    else:
        raise ValueError(f"expected 106 or 203 landmarks, got {pts.shape[0]}")
    return np.stack([(left_eye + right_eye) / 2, lip], axis=0)


def face_rect_from_landmarks(
    pts: np.ndarray, scale: float = 1.5, vx_ratio: float = 0.0, vy_ratio: float = 0.0
) -> FaceRect:
    """The rotated square crop around ``pts`` (the maths of LivePortrait's ``parse_rect_from_landmark``)."""
    pts = np.asarray(pts, dtype=DTYPE)
    eye, lip = eye_lip_axis_points(pts)
    uy = lip - eye
    length = np.linalg.norm(uy)
    uy = np.array([0, 1], dtype=DTYPE) if length <= 1e-3 else uy / length
    ux = np.array((uy[1], -uy[0]), dtype=DTYPE)
    angle = acos(float(ux[0]))  # image coordinates: clockwise positive
    if ux[1] < 0:
        angle = -angle

    rot = np.array([ux, uy])
    center0 = pts.mean(axis=0)
    rpts = (pts - center0) @ rot.T
    lt, rb = rpts.min(axis=0), rpts.max(axis=0)
    center1 = (lt + rb) / 2
    size = rb - lt
    size[:] = max(size[0], size[1])  # square
    size *= scale
    center = center0 + ux * center1[0] + uy * center1[1]
    center = center + ux * (vx_ratio * size) + uy * (vy_ratio * size)
    return FaceRect(center=center, size=size, angle=angle)


def crop_transform(
    pts: np.ndarray,
    dsize: int,
    scale: float = 1.5,
    vx_ratio: float = 0.0,
    vy_ratio: float = -0.1,
    flag_do_rot: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(M_o2c, M_c2o) as 3x3 float32 for a ``dsize`` crop around the landmarks."""
    rect = face_rect_from_landmarks(pts, scale=scale, vx_ratio=vx_ratio, vy_ratio=vy_ratio)
    s = dsize / rect.size[0]
    cx, cy = rect.center
    tc = dsize / 2
    if flag_do_rot:
        c, si = cos(rect.angle), sin(rect.angle)
        m = np.array(
            [[s * c, s * si, tc - s * (c * cx + si * cy)], [-s * si, s * c, tc - s * (-si * cx + c * cy)]],
            dtype=DTYPE,
        )
    else:
        m = np.array([[s, 0, tc - s * cx], [0, s, tc - s * cy]], dtype=DTYPE)
    m_o2c = np.vstack([m, np.array([0, 0, 1], dtype=DTYPE)])
    return m_o2c, np.linalg.inv(m_o2c)


def crop_image(
    img: np.ndarray,
    pts: np.ndarray,
    dsize: int,
    scale: float = 1.5,
    vx_ratio: float = 0.0,
    vy_ratio: float = -0.1,
    flag_do_rot: bool = True,
) -> Crop:
    """Warp ``img`` (HxWx3) into the face-aligned ``dsize`` square (bilinear, constant-0 border)."""
    m_o2c, m_c2o = crop_transform(pts, dsize, scale, vx_ratio, vy_ratio, flag_do_rot)
    image = cv2.warpAffine(img, m_o2c[:2], (dsize, dsize), flags=cv2.INTER_LINEAR)
    return Crop(image=image, M_o2c=m_o2c, M_c2o=m_c2o, dsize=dsize)


def transform_points(pts: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply the affine part of a 2x3 / 3x3 matrix to Nx2 points."""
    return pts @ m[:2, :2].T + m[:2, 2]


def network_input(crop_rgb: np.ndarray) -> np.ndarray:
    """The 256 x 256 network input of a crop (area-averaged, as upstream)."""
    return cv2.resize(crop_rgb, (NETWORK_INPUT_SIZE, NETWORK_INPUT_SIZE), interpolation=cv2.INTER_AREA)


def generator_to_original(m_c2o: np.ndarray, dsize: int, size: int = GENERATOR_SIZE) -> np.ndarray:
    """``M_c2o`` for an image of ``size`` pixels that covers the ``dsize`` crop (pixel-centre aligned).

    A pixel centre x in the ``size`` image is (x + 0.5) * dsize / size - 0.5 in the crop. For
    ``size == dsize`` this is ``m_c2o`` itself (bit-identical to upstream).
    """
    if size == dsize:
        return m_c2o
    k = dsize / size
    scale = np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5], [0, 0, 1]], dtype=np.float64)
    return (m_c2o.astype(np.float64) @ scale).astype(DTYPE)


def mask_template(size: int = GENERATOR_SIZE) -> np.ndarray:
    """LivePortrait's paste-back mask (``mask_template.png``) as size x size x 3 uint8, computed.

    The shipped 512 px file is exactly ``floor(255 * max(0, 1 - d / 16))`` with ``d`` the distance of a
    pixel to the square [16, 496]^2: a 16 px linear fade with rounded corners (checked bit-exact
    against the file in the tests), so it is generated instead of shipped.
    """
    k = size / GENERATOR_SIZE
    lo, hi, fade = 16 * k, 496 * k, 16 * k
    y, x = np.mgrid[:size, :size].astype(np.float64)
    dx = np.maximum(np.maximum(lo - x, x - hi), 0)
    dy = np.maximum(np.maximum(lo - y, y - hi), 0)
    mask = np.floor(255 * np.clip(1 - np.hypot(dx, dy) / fade, 0, 1)).astype(np.uint8)
    return np.repeat(mask[..., None], 3, axis=2)


def warp_mask(mask_template: np.ndarray, m_c2o: np.ndarray, dsize: int, image_hw: tuple[int, int]) -> np.ndarray:
    """The paste-back mask in original-image space, float32 in [0, 1] (HxWx3 like the template)."""
    m = generator_to_original(m_c2o, dsize, mask_template.shape[0])
    h, w = image_hw
    mask = cv2.warpAffine(mask_template, m[:2], (w, h), flags=cv2.INTER_LINEAR)
    return mask.astype(np.float32) / 255.0


def paste_back(
    generated: np.ndarray, m_c2o: np.ndarray, dsize: int, original: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Blend the generated face (size x size x 3 uint8) back into the original image."""
    m = generator_to_original(m_c2o, dsize, generated.shape[0])
    h, w = original.shape[:2]
    warped = cv2.warpAffine(generated, m[:2], (w, h), flags=cv2.INTER_LINEAR)
    return np.clip(mask * warped + (1 - mask) * original, 0, 255).astype(np.uint8)


def resize_to_limit(img: np.ndarray, max_dim: int = 1280, division: int = 2) -> np.ndarray:
    """Downscale so the long side is at most ``max_dim``, then crop H and W to multiples of ``division``.

    This is what LivePortrait does to every source image before detection (source_max_dim 1280).
    """
    h, w = img.shape[:2]
    if max_dim > 0 and max(h, w) > max_dim:
        if h > w:
            new_h, new_w = max_dim, int(w * (max_dim / h))
        else:
            new_w, new_h = max_dim, int(h * (max_dim / w))
        img = cv2.resize(img, (new_w, new_h))
    division = max(division, 1)
    new_h = img.shape[0] - img.shape[0] % division
    new_w = img.shape[1] - img.shape[1] % division
    if new_h == 0 or new_w == 0:
        return img  # too small to crop to a multiple: leave it
    return img[:new_h, :new_w]
