"""EVA02-CLIP-L-14-336's visual tower through timm, as PuLID uses it (float32).

One pass gives both features the IDEncoder needs: the L2-normalised CLS projection (768-d) and the
residual stream entering blocks 4, 8, 12, 16, 20 (outputs of blocks 3/7/11/15/19, CLS first, pre-norm).
Checkpoints in the vendored eva_clip layout (``visual.*``, QuanSun) or timm/open_clip layout load through
``timm.models.eva.checkpoint_filter_fn`` (which drops and recomputes the rope buffers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.models.eva import Eva, checkpoint_filter_fn
from torch import nn

HIDDEN_BLOCKS = (3, 7, 11, 15, 19)

# timm ``eva02_large_patch14_clip_336`` with the 768-d CLIP projection as head
REAL: dict[str, Any] = dict(
    img_size=336, patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4 * 2 / 3, qkv_fused=False,
    swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(16, 16),
    global_pool="token", num_classes=768,
)  # fmt: skip
# the reference fixtures' tiny tower: width 64, 2 heads, 21 blocks (the deepest hidden state is block 19's)
TINY: dict[str, Any] = {**REAL, "embed_dim": 64, "depth": 21, "num_heads": 2}


@dataclass
class EvaFeatures:
    cls: torch.Tensor  # [B,768], L2-normalised
    hidden: list[torch.Tensor]  # 5 x [B,577,width]


def build_eva(config: dict[str, Any], device: str | torch.device = "cpu") -> Eva:
    with torch.device(device):
        return Eva(**config)


def load_eva_state(model: Eva, state: dict[str, torch.Tensor]) -> Eva:
    """Strict load of a vendored (``visual.*``) or timm checkpoint into a model built on a real device (its
    rope buffers are computed at construction, not loaded)."""
    state = {k: v for k, v in state.items() if k.startswith("visual.")} or state
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    return model


def eva_features(model: nn.Module, pixels: torch.Tensor) -> EvaFeatures:
    final, inter = model.forward_intermediates(  # type: ignore[operator]
        pixels, indices=list(HIDDEN_BLOCKS), return_prefix_tokens=True, output_fmt="NLC"
    )
    hidden = [torch.cat([prefix, spatial], dim=1) for spatial, prefix in inter]
    cls = model.forward_head(final)  # type: ignore[operator]
    cls = torch.div(cls, torch.norm(cls, 2, 1, True))
    return EvaFeatures(cls, hidden)
