"""PuLID's identity injection into the SDXL UNet's cross-attention layers (``attn2``), per batch row.

For one layer with latent queries Q, the text cross-attention output O (before ``to_out``) and a row's id
tokens E (``NUM_ZERO`` all-zero tokens appended: with bias-free projections they are k = v = 0 attention
sinks that dilute the identity):

    I = SDPA(Q, E W_k^T, E W_v^T)
    P = (sum_n O*I / sum_n O*O) * O                       projection of I on O along the token axis
    plain:          O + s*I
    extreme style:  O + s*(I - P)                         (16 zero tokens)
    fidelity:       O + s*(I + (w - 1)*P)                 (8 zero tokens), w = sum over the first 5 id
                    tokens of the head-mean softmax(Q K_id^T) without the 1/sqrt(d) scale

The projections ``id_to_k`` / ``id_to_v`` stay float32 whatever the UNet dtype (as in the original), their
output is cast to the query dtype, and the orthogonal combinations run in float32.

Unlike the original (module globals), mode, zero count and scale travel with each call as ``IDConditioning``:
rows of different requests (modes, scales, token counts) share one UNet batch. Rows with equal token
count and mode form one group that runs as one batched SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

Mode = Literal["fidelity", "extreme style", "plain"]
FIDELITY_REFERENCE_TOKENS = 5  # ORTHO_v2 weighs the first 5 tokens: the main image's body tokens


@dataclass(frozen=True)
class ModeSpec:
    num_zero: int
    combine: Literal["add", "ortho", "ortho_v2"]


MODES: dict[str, ModeSpec] = {
    "fidelity": ModeSpec(8, "ortho_v2"),
    "extreme style": ModeSpec(16, "ortho"),
    "plain": ModeSpec(0, "add"),  # the module default; the app never uses it
}


def with_zero_tokens(tokens: torch.Tensor, mode: str) -> torch.Tensor:
    """[R,N,C] -> [R,N+num_zero,C]: the mode's zero tokens appended to each row."""
    zeros = tokens.new_zeros(tokens.shape[0], MODES[mode].num_zero, tokens.shape[-1])
    return torch.cat([tokens, zeros], dim=1)


def row_sequences(id_embedding: torch.Tensor, mode: str, cfg: bool) -> list[torch.Tensor]:
    """Per latent row, the id key sequence the original builds from ``id_embedding`` [2,N,C] = [uncond, cond].

    With CFG the latent rows are [uncond, cond] and each gets its own row. Without CFG (guidance <= 1) the
    original reshapes the 2-row id K/V to the single latent row, so that row sees
    ``[uncond+zeros ; cond+zeros]`` (and fidelity's "first 5 tokens" are the null tokens): reproduced here.
    """
    padded = with_zero_tokens(id_embedding, mode)
    if cfg:
        return [padded[0], padded[1]]
    return [padded.reshape(-1, padded.shape[-1])]


@dataclass
class IDGroup:
    """Latent rows of one UNet batch that share a token count and a mode."""

    rows: torch.Tensor  # [G] long, indices into the UNet batch
    tokens: torch.Tensor  # [G,T,C] float32, zero tokens included
    mode: str
    scale: torch.Tensor  # [G,1,1] float32


@dataclass
class IDConditioning:
    """What every ID processor of one UNet call applies; rows in no group get no identity."""

    groups: list[IDGroup]

    @classmethod
    def build(
        cls, sequences: list[torch.Tensor | None], modes: list[str], scales: list[float], device: torch.device
    ) -> IDConditioning:
        """``sequences[r]`` [T,C] (or None) for latent row r of the UNet batch, with its mode and id_scale."""
        by_key: dict[tuple[int, str], list[int]] = {}
        for r, seq in enumerate(sequences):
            if seq is not None:
                by_key.setdefault((seq.shape[0], modes[r]), []).append(r)
        groups = []
        for (_, mode), rows in by_key.items():
            tokens = torch.stack([sequences[r] for r in rows]).to(device=device, dtype=torch.float32)  # type: ignore[misc]
            scale = torch.tensor([scales[r] for r in rows], dtype=torch.float32, device=device).view(-1, 1, 1)
            groups.append(IDGroup(torch.tensor(rows, dtype=torch.long, device=device), tokens, mode, scale))
        return cls(groups)


class IDAttnProcessor(nn.Module):
    """Cross-attention (SDPA) plus the identity term; owns ``id_to_k`` / ``id_to_v`` of one ``attn2`` layer."""

    def __init__(self, hidden_size: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.id_to_k = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.id_to_v = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        id_cond: IDConditioning | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        batch = hidden_states.shape[0]  # SDXL's transformer blocks pass [B,L,C]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross and encoder_hidden_states is not None:
            context = attn.norm_encoder_hidden_states(context)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)

        if id_cond is not None:
            for group in id_cond.groups:
                out[group.rows] = self._with_identity(query[group.rows], out[group.rows], group, attn.heads)

        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _with_identity(self, query: torch.Tensor, text: torch.Tensor, group: IDGroup, heads: int) -> torch.Tensor:
        rows, head_dim = query.shape[0], query.shape[-1]
        id_key = self.id_to_k(group.tokens).to(query.dtype).view(rows, -1, heads, head_dim).transpose(1, 2)
        id_value = self.id_to_v(group.tokens).to(query.dtype).view(rows, -1, heads, head_dim).transpose(1, 2)
        ident = F.scaled_dot_product_attention(query, id_key, id_value, dropout_p=0.0)
        ident = ident.transpose(1, 2).reshape(rows, -1, heads * head_dim).to(query.dtype)

        combine = MODES[group.mode].combine
        if combine == "add":
            return (text + group.scale * ident).to(text.dtype)
        o, i = text.float(), ident.float()
        projection = torch.sum(o * i, dim=-2, keepdim=True) / torch.sum(o * o, dim=-2, keepdim=True) * o
        if combine == "ortho":
            orthogonal = i - projection
        else:  # ortho_v2: keep more of the projection where the queries attend to the main face
            weights = (query @ id_key.transpose(-2, -1)).softmax(dim=-1).mean(dim=1)
            weights = weights[:, :, :FIDELITY_REFERENCE_TOKENS].sum(dim=-1, keepdim=True)
            orthogonal = i + (weights - 1) * projection
        return (o + group.scale * orthogonal).to(text.dtype)


class SelfAttnProcessor(nn.Module):
    """diffusers' SDPA processor for ``attn1``; takes (and ignores) ``id_cond`` so the UNet can pass it to all."""

    def __init__(self) -> None:
        super().__init__()
        self._sdpa = AttnProcessor2_0()

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        id_cond: IDConditioning | None = None,
    ) -> torch.Tensor:
        return self._sdpa(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def processor_hidden_size(name: str, block_out_channels: list[int]) -> int:
    """The original ``hack_unet_attn_layers`` rule: the block's channel count."""
    if name.startswith("mid_block"):
        return block_out_channels[-1]
    block = int(name.split(".")[1])
    if name.startswith("up_blocks"):
        return list(reversed(block_out_channels))[block]
    return block_out_channels[block]


def build_processors(unet: nn.Module) -> nn.ModuleList:
    """One processor per UNet attention layer, in ``unet.attn_processors`` order (the checkpoint's indices)."""
    config = unet.config  # type: ignore[attr-defined]
    procs: list[nn.Module] = []
    for name in unet.attn_processors:  # type: ignore[attr-defined]
        if name.endswith("attn1.processor"):
            procs.append(SelfAttnProcessor())
        else:
            hidden = processor_hidden_size(name, list(config.block_out_channels))
            procs.append(IDAttnProcessor(hidden, config.cross_attention_dim))
    return nn.ModuleList(procs)


def install_processors(unet: nn.Module, processors: nn.ModuleList) -> None:
    """Attach ``processors`` (built by ``build_processors``) to the UNet's layers, in the same order."""
    names = list(unet.attn_processors)  # type: ignore[attr-defined]
    unet.set_attn_processor(dict(zip(names, processors, strict=True)))  # type: ignore[attr-defined]
