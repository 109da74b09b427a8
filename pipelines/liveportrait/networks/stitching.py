"""S — stitching and lip / eye retargeting MLPs (Linear + ReLU, no output activation)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .configs import MLPConfig, StitchingConfig


class RetargetingMLP(nn.Module):
    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        sizes = [cfg.input_size, *cfg.hidden_sizes]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(sizes[-1], cfg.output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Any float input; float32 output."""
        return self.mlp(x.to(self.mlp[0].weight.dtype)).float()


class StitchingRetargeting(nn.Module):
    """The three MLPs; state-dict keys ``stitching.*``, ``lip.*``, ``eye.*``.

    - ``stitching([x_s, x_d])`` [B,126] -> [B,65]: 63 keypoint deltas + (tx, ty).
    - ``lip([x_s, c_s_lip, c_d_lip])`` [B,65] -> [B,63].
    - ``eye([x_s, c_s_eye_l, c_s_eye_r, c_d_eye])`` [B,66] -> [B,63].
    """

    def __init__(self, cfg: StitchingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stitching = RetargetingMLP(cfg.stitching)
        self.lip = RetargetingMLP(cfg.lip)
        self.eye = RetargetingMLP(cfg.eye)

    def forward(self, stitching: torch.Tensor, lip: torch.Tensor, eye: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"stitching": self.stitching(stitching), "lip": self.lip(lip), "eye": self.eye(eye)}
