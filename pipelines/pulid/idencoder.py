"""PuLID v1's IDEncoder: ArcFace + EVA-CLIP features -> 10 identity tokens (``id_adapter.*`` of pulid_v1.bin).

Tokens 0-4 come from an MLP ("body") over ``[arcface_raw ‖ eva_cls_l2norm]``; token 5+i is
``mapping_i(h_i[:, CLS]) + mean(mapping_patch_i(h_i[:, patches]))`` for the five EVA hidden states h_i.
Submodule names follow the checkpoint so that it loads with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NUM_BODY_TOKENS = 5
NUM_VIT_LAYERS = 5


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear, LayerNorm, LeakyReLU, Linear, LayerNorm, LeakyReLU, Linear (keys .0 .1 .3 .4 .6)."""
    d0, d1, d2, d3 = dims
    return nn.Sequential(
        nn.Linear(d0, d1), nn.LayerNorm(d1), nn.LeakyReLU(), nn.Linear(d1, d2), nn.LayerNorm(d2), nn.LeakyReLU(),
        nn.Linear(d2, d3),
    )  # fmt: skip


class IDEncoder(nn.Module):
    """``IDEncoder(width=1280, context_dim=2048, num_token=5)`` of the original; ``vit_width`` is the EVA width
    (1024 for EVA02-L; the tiny fixtures use 64)."""

    def __init__(self, width: int = 1280, context_dim: int = 2048, num_token: int = 5, vit_width: int = 1024) -> None:
        super().__init__()
        self.num_token = num_token
        self.context_dim = context_dim
        h1 = min((context_dim * num_token) // 4, 1024)
        h2 = min((context_dim * num_token) // 2, 1024)
        self.body = _mlp((width, h1, h2, context_dim * num_token))
        for i in range(NUM_VIT_LAYERS):
            setattr(self, f"mapping_{i}", _mlp((vit_width, vit_width, vit_width, context_dim)))
            setattr(self, f"mapping_patch_{i}", _mlp((vit_width, vit_width, vit_width, context_dim)))

    def forward(self, id_cond: torch.Tensor, vit_hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        """``id_cond`` [B,1280], ``vit_hidden`` 5 x [B,1+P,vit_width] (CLS first) -> [B,10,context_dim]."""
        body = self.body(id_cond).reshape(-1, self.num_token, self.context_dim)
        layer_tokens = []
        for i, h in enumerate(vit_hidden):
            cls_token = getattr(self, f"mapping_{i}")(h[:, :1])
            layer_tokens.append(cls_token + getattr(self, f"mapping_patch_{i}")(h[:, 1:]).mean(dim=1, keepdim=True))
        return torch.cat([body, *layer_tokens], dim=1)
