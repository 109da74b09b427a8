"""ControlNet-OpenPose style drawing, with the same cv2 calls as fal's controlnet-aux fork.

Body: 17 limbs as filled ``ellipse2Poly`` polygons (colour x 0.6 per limb) then radius-4 joints. Hands:
20 bones, width 2, HSV rainbow, (0, 0, 255) joints. Face: white radius-3 dots. The mask modes
(not in the fork's snapshot; inferred from public DWPose utilities) fill the convex hull of each visible
face / hand in white.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import cv2
import numpy as np

from .pose import Point, Pose

EPS = 0.01
STICK_WIDTH = 4

# OpenPose 1-based joint pairs; the two trailing pairs of the original list ([3,17], [6,18]) never draw.
LIMBS = [
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11),
    (2, 12), (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18),
]  # fmt: skip
COLORS = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
]  # fmt: skip
# Five fingers of four bones each, fanning out from the wrist (point 0).
HAND_EDGES = [
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
]  # fmt: skip
# float64 colours, passed to cv2 as they are (cv2 rounds them).
HAND_COLORS = [np.array(colorsys.hsv_to_rgb(i / float(len(HAND_EDGES)), 1.0, 1.0)) * 255 for i in range(20)]

DRAW_MODES = {
    # mode: (body, hands, face, hand mask, face mask)
    "full-pose": (True, True, True, False, False),
    "body-pose": (True, False, False, False, False),
    "face-pose": (False, False, True, False, False),
    "hand-pose": (False, True, False, False, False),
    "face-hand-mask": (False, False, False, True, True),
    "face-mask": (False, False, False, False, True),
    "hand-mask": (False, False, False, True, False),
}


def _scale(points: Sequence[Point | None], canvas: np.ndarray) -> tuple[float, float]:
    """(H, W) multipliers: the original treats a part whose points all lie in [0, 1] as normalised."""
    visible = [p for p in points if p is not None]
    if visible and all(0 <= abs(x) <= 1 and 0 <= abs(y) <= 1 for x, y in visible):
        height, width = canvas.shape[:2]
        return float(height), float(width)
    return 1.0, 1.0


def draw_body(canvas: np.ndarray, body: Sequence[Point | None]) -> None:
    sh, sw = _scale(body, canvas)
    for (a, b), color in zip(LIMBS, COLORS, strict=False):
        p1, p2 = body[a - 1], body[b - 1]
        if p1 is None or p2 is None:
            continue
        xs = np.array([p1[0], p2[0]]) * sw
        ys = np.array([p1[1], p2[1]]) * sh
        length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = cv2.ellipse2Poly(
            (int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1
        )
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in color])
    for point, color in zip(body, COLORS, strict=False):
        if point is not None:
            cv2.circle(canvas, (int(point[0] * sw), int(point[1] * sh)), 4, color, thickness=-1)


def draw_hand(canvas: np.ndarray, hand: Sequence[Point | None] | None) -> None:
    if not hand:
        return
    sh, sw = _scale(hand, canvas)
    for (a, b), color in zip(HAND_EDGES, HAND_COLORS, strict=True):
        p1, p2 = hand[a], hand[b]
        if p1 is None or p2 is None:
            continue
        x1, y1, x2, y2 = int(p1[0] * sw), int(p1[1] * sh), int(p2[0] * sw), int(p2[1] * sh)
        if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
            cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=2)
    for point in hand:
        if point is None:
            continue
        x, y = int(point[0] * sw), int(point[1] * sh)
        if x > EPS and y > EPS:
            cv2.circle(canvas, (x, y), 4, (0, 0, 255), thickness=-1)


def draw_face(canvas: np.ndarray, face: Sequence[Point | None] | None) -> None:
    if not face:
        return
    sh, sw = _scale(face, canvas)
    for point in face:
        if point is None:
            continue
        x, y = int(point[0] * sw), int(point[1] * sh)
        if x > EPS and y > EPS:
            cv2.circle(canvas, (x, y), 3, (255, 255, 255), thickness=-1)


def fill_hull(canvas: np.ndarray, points: Sequence[Point | None] | None) -> None:
    """White filled convex hull of the visible points (mask modes)."""
    visible = [p for p in points or [] if p is not None]
    if not visible:
        return
    hull = cv2.convexHull(np.array(visible, dtype=np.float32).astype(np.int32))
    cv2.fillConvexPoly(canvas, hull, (255, 255, 255))


def render(poses: Sequence[Pose], height: int, width: int, mode: str = "body-pose") -> np.ndarray:
    """Black HxWx3 uint8 RGB canvas with every pose drawn in ``mode`` (person by person)."""
    body, hands, face, hand_mask, face_mask = DRAW_MODES[mode]
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for pose in poses:
        if body:
            draw_body(canvas, pose.body)
        if hands:
            draw_hand(canvas, pose.left_hand)
            draw_hand(canvas, pose.right_hand)
        if face:
            draw_face(canvas, pose.face)
        if hand_mask:
            fill_hull(canvas, pose.left_hand)
            fill_hull(canvas, pose.right_hand)
        if face_mask:
            fill_hull(canvas, pose.face[:68] if pose.face else None)
    return canvas
