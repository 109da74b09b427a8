"""Expression / head-pose editing maths on LivePortrait's implicit keypoints (batched torch).

The fal knobs (blink, eyebrow, wink, pupil_x/y, aaa, eee, woo, smile, rotate_*) are the expression
editor of ComfyUI-AdvancedLivePortrait: fixed additive deltas on the 21x3 expression keypoints plus a
rotation offset (``calc_fe``), with the source ratio 1 and no driving image. Keypoint algebra, stitching
and lip-zero are LivePortrait v1.0's. Everything here works on a batch: one row per request.

Conventions: keypoints are row vectors right-multiplied by ``R = (Rz(roll) Ry(yaw) Rx(pitch))^T``;
angles in degrees; index ``[k, c]`` is keypoint k, coordinate c (0 = x, 1 = y, 2 = z).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

NUM_KP = 21
LIP_ZERO_THRESHOLD = 0.03  # LivePortrait skips lip-zero when the source mouth is already closed

Mlp = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ExpressionEdit:
    """The fal knobs of one request (names as in the fal schema)."""

    blink: float = 0.0
    eyebrow: float = 0.0
    wink: float = 0.0
    pupil_x: float = 0.0
    pupil_y: float = 0.0
    aaa: float = 0.0
    eee: float = 0.0
    woo: float = 0.0
    smile: float = 0.0
    rotate_pitch: float = 0.0
    rotate_yaw: float = 0.0
    rotate_roll: float = 0.0

    @classmethod
    def from_input(cls, inp: object) -> ExpressionEdit:
        return cls(**{name: float(getattr(inp, name)) for name in cls.__dataclass_fields__})


def expression_deltas(edit: ExpressionEdit) -> tuple[np.ndarray, np.ndarray]:
    """(delta_exp [21,3], delta_rot_deg [pitch, yaw, roll]) for one request.

    The yaw sign is flipped first (the editor's convention: positive ``rotate_yaw`` turns the head to
    the viewer's right). The terms are accumulated in the editor's order.
    """
    e = np.zeros((NUM_KP, 3), dtype=np.float64)
    pitch, yaw, roll = edit.rotate_pitch, -edit.rotate_yaw, edit.rotate_roll

    s = edit.smile
    e[20, 1] += -0.01 * s
    e[14, 1] += -0.02 * s
    e[17, 1] += 0.0065 * s
    e[17, 2] += 0.003 * s
    e[13, 1] += -0.00275 * s
    e[16, 1] += -0.00275 * s
    e[3, 1] += -0.0035 * s
    e[7, 1] += -0.0035 * s

    a = edit.aaa  # "mouth" in the editor: opens the jaw and tilts the head down a little
    e[19, 1] += 0.001 * a
    e[19, 2] += 0.0001 * a
    e[17, 1] += -0.0001 * a
    pitch -= 0.05 * a

    e[20, 2] += -0.001 * edit.eee
    e[20, 1] += -0.001 * edit.eee
    e[14, 1] += -0.001 * edit.eee

    e[14, 1] += 0.001 * edit.woo
    e[3, 1] += -0.0005 * edit.woo
    e[7, 1] += -0.0005 * edit.woo
    e[17, 2] += -0.0005 * edit.woo

    w = edit.wink
    e[11, 1] += 0.001 * w
    e[13, 1] += -0.0003 * w
    e[17, 0] += 0.0003 * w
    e[17, 1] += 0.0003 * w
    e[3, 1] += -0.0003 * w
    roll -= 0.1 * w
    yaw -= 0.1 * w

    px = edit.pupil_x
    if px > 0:
        e[11, 0] += 0.0007 * px
        e[15, 0] += 0.001 * px
    else:
        e[11, 0] += 0.001 * px
        e[15, 0] += 0.0007 * px

    py = edit.pupil_y
    e[11, 1] += -0.001 * py
    e[15, 1] += -0.001 * py
    blink = edit.blink - py / 2.0  # looking up opens the eyelids

    e[11, 1] += -0.001 * blink
    e[13, 1] += 0.0003 * blink
    e[15, 1] += -0.001 * blink
    e[16, 1] += 0.0003 * blink
    e[1, 1] += -0.00025 * blink
    e[2, 1] += 0.00025 * blink

    eb = edit.eyebrow
    if eb > 0:
        e[1, 1] += 0.001 * eb
        e[2, 1] += -0.001 * eb
    else:
        e[1, 0] += -0.001 * eb
        e[2, 0] += 0.001 * eb
        e[1, 1] += 0.0003 * eb
        e[2, 1] += -0.0003 * eb
    return e.astype(np.float32), np.array([pitch, yaw, roll], dtype=np.float32)


def batch_deltas(
    edits: Sequence[ExpressionEdit], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked deltas: ([B,21,3], [B,3])."""
    pairs = [expression_deltas(e) for e in edits]
    exp = torch.from_numpy(np.stack([p[0] for p in pairs])).to(device)
    rot = torch.from_numpy(np.stack([p[1] for p in pairs])).to(device)
    return exp, rot


def headpose_degrees(bins: torch.Tensor) -> torch.Tensor:
    """[B,66] pose logits -> [B] degrees: softmax expectation over 3-degree bins, centred at 97.5."""
    idx = torch.arange(bins.shape[1], dtype=torch.float32, device=bins.device)
    return (torch.softmax(bins.float(), dim=1) * idx).sum(dim=1) * 3 - 97.5


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Degrees [B] (or [B,1]) -> [B,3,3] = (Rz(roll) Ry(yaw) Rx(pitch))^T."""
    x, y, z = (a.reshape(-1, 1).float() / 180 * np.pi for a in (pitch, yaw, roll))
    ones, zeros = torch.ones_like(x), torch.zeros_like(x)
    b = x.shape[0]
    rx = torch.cat([ones, zeros, zeros, zeros, x.cos(), -x.sin(), zeros, x.sin(), x.cos()], 1).reshape(b, 3, 3)
    ry = torch.cat([y.cos(), zeros, y.sin(), zeros, ones, zeros, -y.sin(), zeros, y.cos()], 1).reshape(b, 3, 3)
    rz = torch.cat([z.cos(), -z.sin(), zeros, z.sin(), z.cos(), zeros, zeros, zeros, ones], 1).reshape(b, 3, 3)
    return (rz @ ry @ rx).permute(0, 2, 1)


@dataclass
class SourceMotion:
    """The motion extractor's output for a batch of sources, refined (degrees, [B,21,3] keypoints)."""

    kp: torch.Tensor  # [B,21,3] canonical keypoints
    exp: torch.Tensor  # [B,21,3] expression
    pitch: torch.Tensor  # [B] degrees
    yaw: torch.Tensor
    roll: torch.Tensor
    t: torch.Tensor  # [B,3]
    scale: torch.Tensor  # [B,1]

    @classmethod
    def from_raw(cls, raw: dict[str, torch.Tensor]) -> SourceMotion:
        b = raw["kp"].shape[0]
        return cls(
            kp=raw["kp"].float().reshape(b, NUM_KP, 3),
            exp=raw["exp"].float().reshape(b, NUM_KP, 3),
            pitch=headpose_degrees(raw["pitch"]),
            yaw=headpose_degrees(raw["yaw"]),
            roll=headpose_degrees(raw["roll"]),
            t=raw["t"].float(),
            scale=raw["scale"].float(),
        )

    def rotation(self) -> torch.Tensor:
        return rotation_matrix(self.pitch, self.yaw, self.roll)

    def source_keypoints(self) -> torch.Tensor:
        """x_s = scale * (kp @ R + exp) + (tx, ty, 0)  (LivePortrait's transform_keypoint)."""
        x = (self.kp @ self.rotation() + self.exp) * self.scale[..., None]
        x[..., :2] += self.t[:, None, :2]
        return x

    def driving_keypoints(self, delta_exp: torch.Tensor, delta_rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_d, R_new) of the expression editor: scale * ((kp + exp + delta) @ R_new) + t.

        Unlike ``source_keypoints`` the expression is rotated with the canonical keypoints and the
        full translation (tz included) is added; stitching absorbs most of that difference.
        """
        r_new = rotation_matrix(self.pitch + delta_rot[:, 0], self.yaw + delta_rot[:, 1], self.roll + delta_rot[:, 2])
        x_d = self.scale[..., None] * ((self.kp + self.exp + delta_exp) @ r_new) + self.t[:, None, :]
        return x_d, r_new


def stitch(stitching_mlp: Mlp, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
    """x_d + stitching delta: 63 keypoint offsets plus a (tx, ty) shift of every keypoint."""
    b, n = x_s.shape[:2]
    delta = stitching_mlp(torch.cat([x_s.reshape(b, -1), x_d.reshape(b, -1)], dim=1))
    out = x_d + delta[:, : 3 * n].reshape(b, n, 3)
    out[..., :2] += delta[:, 3 * n : 3 * n + 2].reshape(b, 1, 2)
    return out


def distance_ratio(lmk: np.ndarray, i1: int, i2: int, i3: int, i4: int, eps: float = 1e-6) -> np.ndarray:
    """|p_i1 - p_i2| / (|p_i3 - p_i4| + eps) for [B,N,2] landmarks -> [B,1]."""
    num = np.linalg.norm(lmk[:, i1] - lmk[:, i2], axis=1, keepdims=True)
    return num / (np.linalg.norm(lmk[:, i3] - lmk[:, i4], axis=1, keepdims=True) + eps)


def lip_open_ratio(lmk203: np.ndarray) -> float:
    """Mouth opening of one face from its 203 landmarks (inner-lip gap / mouth width)."""
    return float(distance_ratio(lmk203[None].astype(np.float32), 90, 102, 48, 66)[0, 0])


def eye_open_ratios(lmk203: np.ndarray) -> np.ndarray:
    """(left, right) eye opening of one face from its 203 landmarks."""
    lmk = lmk203[None].astype(np.float32)
    return np.concatenate([distance_ratio(lmk, 6, 18, 0, 12), distance_ratio(lmk, 30, 42, 24, 36)], axis=1)[0]


def lip_zero_delta(lip_mlp: Mlp, x_s: torch.Tensor, c_s_lip: torch.Tensor) -> torch.Tensor:
    """Keypoint offsets that close the source mouth: lip MLP on [x_s, c_s_lip, 0] -> [B,21,3]."""
    b, n = x_s.shape[:2]
    ratio = torch.stack([c_s_lip.float(), torch.zeros_like(c_s_lip, dtype=torch.float32)], dim=1)
    return lip_mlp(torch.cat([x_s.reshape(b, -1), ratio], dim=1)).reshape(b, n, 3)
