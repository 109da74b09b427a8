"""The PuLID v1 adapter as one module whose state dict is ``pulid_v1.bin``'s layout:

- ``id_adapter.*``: the IDEncoder;
- ``id_adapter_attn_layers.<i>.id_to_{k,v}.weight``: index i is the position in ``unet.attn_processors`` (down,
  up, mid blocks); odd indices are the ``attn2`` layers, even ones (``attn1``) have no parameters.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .id_attention import build_processors, install_processors
from .idencoder import IDEncoder


class PuLIDAdapter(nn.Module):
    def __init__(self, unet: UNet2DConditionModel, context_dim: int, vit_width: int) -> None:
        super().__init__()
        self.id_adapter = IDEncoder(context_dim=context_dim, vit_width=vit_width)
        self.id_adapter_attn_layers = build_processors(unet)

    def install(self, unet: UNet2DConditionModel) -> None:
        """Attach the processors to the UNet (after the UNet has its weights and dtype: they stay float32)."""
        install_processors(unet, self.id_adapter_attn_layers)


def build_adapter(unet: UNet2DConditionModel, vit_width: int, device: str | torch.device = "cpu") -> PuLIDAdapter:
    with torch.device(device):
        return PuLIDAdapter(unet, unet.config.cross_attention_dim, vit_width)
