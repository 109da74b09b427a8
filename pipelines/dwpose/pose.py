"""RTMPose (DWPose-l) crops, SimCC decoding and the 133 -> OpenPose-134 conversion.

The arithmetic follows fal's code path step by step, including its dtypes (crop geometry in float64
with float32 affine points, SimCC locations in float32, image coordinates in float64), so keypoints
match it to float precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

POSE_INPUT_W, POSE_INPUT_H = 288, 384
SIMCC_SPLIT_RATIO = 2.0
BOX_PADDING = 1.25
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])
NUM_KEYPOINTS = 133
VISIBLE_THR = 0.3  # fal's fork keeps a keypoint when score >= 0.3 (the neck uses > 0.3 on shoulders)

# OpenPose-18 from COCO-17 after inserting the neck at 17: new[OPENPOSE_IDX] = old[MMPOSE_IDX].
MMPOSE_IDX = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
OPENPOSE_IDX = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]
BODY, FACE, LEFT_HAND, RIGHT_HAND = slice(0, 18), slice(24, 92), slice(92, 113), slice(113, 134)
R_EYE, L_EYE = 14, 15


@dataclass(frozen=True)
class Crop:
    """One person crop: the model input (3x384x288 float32) and the box it came from."""

    input: np.ndarray
    center: np.ndarray  # (2,) float64
    scale: np.ndarray  # (2,) float64, aspect-fixed to 288/384


def center_scale(box: np.ndarray, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    return np.array([x1 + x2, y1 + y2]) * 0.5, np.array([x2 - x1, y2 - y1]) * padding


def fix_aspect(scale: np.ndarray, aspect: float = POSE_INPUT_W / POSE_INPUT_H) -> np.ndarray:
    """Grow the short side so that w / h == aspect."""
    w, h = scale
    return np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])


def warp_matrix(center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """2x3 affine mapping the (unrotated) scale box around ``center`` onto the 288x384 input."""

    def third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = a - b  # rotate a - b by 90 degrees around b
        return b + np.array([-d[1], d[0]], dtype=d.dtype)

    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + np.array([0.0, scale[0] * -0.5])
    src[2] = third_point(src[0], src[1])
    dst = np.zeros((3, 2), dtype=np.float32)
    dst[0] = [POSE_INPUT_W * 0.5, POSE_INPUT_H * 0.5]
    dst[1] = dst[0] + np.array([0.0, POSE_INPUT_W * -0.5])
    dst[2] = third_point(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


def _normalise_table() -> np.ndarray:
    """(3, 256) float32: ``(v - mean) / std`` per channel, computed in float64 like fal's code, so a table
    lookup gives its normalised crop bit for bit (and several times faster than the float64 arithmetic)."""
    return ((np.arange(256, dtype=np.float64)[None, :] - MEAN[:, None]) / STD[:, None]).astype(np.float32)


NORMALISE = _normalise_table()


def crop(image: np.ndarray, box: np.ndarray) -> Crop:
    """Affine crop of one person (1.25x box, aspect fixed), normalised, CHW float32."""
    center, scale = center_scale(box)
    scale = fix_aspect(scale)
    patch = cv2.warpAffine(image, warp_matrix(center, scale), (POSE_INPUT_W, POSE_INPUT_H), flags=cv2.INTER_LINEAR)
    chw = np.empty((3, POSE_INPUT_H, POSE_INPUT_W), dtype=np.float32)
    for c in range(3):
        np.take(NORMALISE[c], patch[:, :, c], out=chw[c])
    return Crop(chw, center, scale)


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax decoding: (locations in crop pixels [N, K, 2] float32, scores [N, K] float32).

    The score is the smaller of the two maxima; locations with score <= 0 become -1 (before halving,
    as fal's code does). No softmax, no sub-pixel refinement.
    """
    n, k, _ = simcc_x.shape
    flat_x, flat_y = simcc_x.reshape(n * k, -1), simcc_y.reshape(n * k, -1)
    locs = np.stack([flat_x.argmax(axis=1), flat_y.argmax(axis=1)], axis=-1).astype(np.float32)
    max_x, max_y = flat_x.max(axis=1), flat_y.max(axis=1)
    vals = np.where(max_x > max_y, max_y, max_x)
    locs[vals <= 0.0] = -1
    locs /= SIMCC_SPLIT_RATIO
    return locs.reshape(n, k, 2), vals.reshape(n, k)


def to_image(locs: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Crop-pixel locations [K, 2] -> padded-image pixels (float64)."""
    size = np.array([POSE_INPUT_W, POSE_INPUT_H])
    return locs / size * scale + center - scale / 2


def to_openpose(keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """133 COCO-WholeBody points -> [N, 134, 3] (x, y, score): neck inserted at 17, OpenPose order."""
    info = np.concatenate([keypoints, scores[..., None]], axis=-1)
    neck = np.mean(info[:, [5, 6]], axis=1)
    neck[:, 2] = np.logical_and(info[:, 5, 2] > VISIBLE_THR, info[:, 6, 2] > VISIBLE_THR)
    out = np.insert(info, 17, neck, axis=1)
    out[:, OPENPOSE_IDX] = out[:, MMPOSE_IDX]
    return out


Point = tuple[float, float]


@dataclass(frozen=True)
class Pose:
    """One person's visible points (None where hidden). A part with no visible point is None."""

    body: list[Point | None]  # 18, OpenPose order
    left_hand: list[Point | None] | None  # 21
    right_hand: list[Point | None] | None  # 21
    face: list[Point | None] | None  # 68 face points plus the two body eyes, as fal's fork appends


def _visible(part: np.ndarray) -> list[Point | None] | None:
    points = [(float(x), float(y)) if s >= VISIBLE_THR else None for x, y, s in part]
    return None if all(p is None for p in points) else points


def poses_from_openpose(openpose: np.ndarray) -> list[Pose]:
    """Split [N, 134, 3] into per-person visible parts."""
    poses = []
    for person in openpose:
        body = _visible(person[BODY]) or [None] * 18
        face = _visible(person[FACE])
        if face is not None:
            face = [*face, body[R_EYE], body[L_EYE]]
        poses.append(Pose(body, _visible(person[LEFT_HAND]), _visible(person[RIGHT_HAND]), face))
    return poses
