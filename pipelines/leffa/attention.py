"""Leffa's two data paths as attention processors on stock diffusers UNets (spec §4.2).

- reference UNet, ``attn1``: records its input ``norm1(h)`` (the block's reference feature), then plain
  self-attention;
- generative UNet, ``attn1``: queries from its own tokens, keys/values from ``[own tokens ; reference tokens]``
  (the same as Leffa's attention over the concatenation with only the first N outputs kept);
- ``attn2`` of both: skipped, returning its input, so each block adds ``norm2(h)`` (Leffa's SkipAttnProcessor).

Features are keyed by block path (``down_blocks.1.attentions.0.transformer_blocks.0``), never by position:
``named_modules`` order differs from forward order (up before mid).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

Features = dict[str, torch.Tensor]
"""Reference features by block path, each (batch, tokens, channels)."""


class FeaturesComplete(Exception):
    """Raised by the last recording processor: the rest of the reference UNet's forward is not needed."""


class SkipAttnProcessor:
    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states


class RecordingProcessor:
    """Reference UNet attn1: keep the input in ``features[block]``; raise FeaturesComplete after the last block."""

    def __init__(self, block: str, features: Features, last: bool) -> None:
        self.block, self.features, self.last = block, features, last
        self.attention = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        self.features[self.block] = hidden_states
        if self.last:
            raise FeaturesComplete
        return self.attention(attn, hidden_states)


class ReferenceAttnProcessor:
    """Generative UNet attn1: self-attention whose keys and values also cover ``features[block]``."""

    def __init__(self, block: str, features: Features) -> None:
        self.block, self.features = block, features
        self.attention = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        context = torch.cat([hidden_states, self.features[self.block]], dim=1)
        return self.attention(attn, hidden_states, encoder_hidden_states=context)


def transformer_blocks(unet: UNet2DConditionModel) -> list[str]:
    """Block paths of every BasicTransformerBlock in forward order (down -> mid -> up)."""
    names = [n.removesuffix(".attn1") for n, m in unet.named_modules() if n.endswith(".attn1")]

    def order(name: str) -> tuple[int, int]:
        stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[name.partition(".")[0]]
        return stage, names.index(name)

    return sorted(names, key=order)


def install_reference(unet: UNet2DConditionModel, features: Features) -> list[str]:
    """Processors of the reference UNet; returns its block paths in forward order."""
    blocks = transformer_blocks(unet)
    processors = {}
    for name in unet.attn_processors:
        block = name.removesuffix(".attn1.processor").removesuffix(".attn2.processor")
        if name.endswith("attn1.processor"):
            processors[name] = RecordingProcessor(block, features, last=block == blocks[-1])
        else:
            processors[name] = SkipAttnProcessor()
    unet.set_attn_processor(processors)
    return blocks


def install_generative(unet: UNet2DConditionModel, features: Features) -> None:
    processors = {}
    for name in unet.attn_processors:
        block = name.removesuffix(".attn1.processor")
        processors[name] = ReferenceAttnProcessor(block, features) if name.endswith("attn1.processor") else (
            SkipAttnProcessor())  # fmt: skip
    unet.set_attn_processor(processors)
