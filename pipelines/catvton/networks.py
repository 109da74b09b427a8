"""CatVTON's networks: a stock diffusers SD1.5-inpainting UNet and the sd-vae-ft-mse VAE.

The UNet's module tree is unchanged. Only attention processors differ from SD1.5:

- ``attn1`` (self-attention) runs diffusers' SDPA processor with CatVTON's weights, loaded from its
  attention-only checkpoint through the index map of :func:`attention_index_map`;
- ``attn2`` (cross-attention) runs :class:`SkipCrossAttention`, which returns its input. The transformer
  block therefore still adds ``norm2(h)`` to ``h`` (the branch is live, not deleted), as in CatVTON.

The UNet is called with ``encoder_hidden_states=None``: there is no text encoder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from safetensors.torch import load_file

import weights
from pipelines.common.tensors import configure_precision, recipe_array, torch_dtype
from pipelines.contract import Dtype, WeightSource

from .configs import ATTENTION_BLOCKS, ATTENTION_SLOTS, REAL_UNET, REAL_VAE, TINY_UNET, TINY_VAE

PIPELINE = "catvton"
ATTENTION_PARAMS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")


class SkipCrossAttention:
    """CatVTON's ``SkipAttnProcessor``: the cross-attention returns its (normalised) input unchanged."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


def install_processors(unet: UNet2DConditionModel) -> None:
    """SDPA self-attention everywhere, skipped cross-attention (CatVTON's ``init_adapter``)."""
    processors: dict[str, Any] = {}
    for name in unet.attn_processors:
        processors[name] = SkipCrossAttention() if ".attn2." in name else AttnProcessor2_0()
    unet.set_attn_processor(processors)


# ------------------------------------------------------------------------------ attention checkpoint


class AttentionCheckpointError(ValueError):
    """The attention checkpoint does not fit the UNet (a missing, unused or misshaped tensor)."""


def attn1_blocks(unet: torch.nn.Module) -> list[str]:
    """Paths of the 16 self-attention modules in ``named_modules()`` order (down, up, then mid)."""
    return [name for name, module in unet.named_modules() if name.endswith(".attn1") and isinstance(module, Attention)]


def attention_index_map(unet: torch.nn.Module) -> dict[int, str]:
    """CatVTON's ModuleList index -> UNet module path.

    The original lists every module whose name contains ``attn1``: per block the Attention itself, to_q,
    to_k, to_v, to_out, to_out.0, to_out.1 and its processor (an nn.Module there), 8 indices per block.
    """
    blocks = attn1_blocks(unet)
    if len(blocks) != ATTENTION_BLOCKS:
        raise AttentionCheckpointError(f"expected {ATTENTION_BLOCKS} attn1 blocks in the UNet, found {len(blocks)}")
    return {
        8 * b + s: f"{path}.{slot}" if slot else path
        for b, path in enumerate(blocks)
        for s, slot in enumerate(ATTENTION_SLOTS)
    }


def attention_targets(unet: torch.nn.Module, keys: list[str]) -> dict[str, str]:
    """Checkpoint key (``"<index>.<param>"``, either alias) -> UNet parameter name; raises on unknown keys."""
    index_map = attention_index_map(unet)
    targets = {}
    for key in keys:
        match = re.fullmatch(r"(\d+)\.(.+)", key)
        module = index_map.get(int(match.group(1))) if match else None
        if match is None or module is None:
            raise AttentionCheckpointError(f"attention checkpoint: unexpected key {key!r} (no such module index)")
        targets[key] = f"{module}.{match.group(2)}"
    return targets


def expected_attention_params(unet: torch.nn.Module) -> list[str]:
    """The 80 parameters the checkpoint replaces: q, k, v, out weight and out bias of each attn1."""
    return [f"{block}.{p}" for block in attn1_blocks(unet) for p in ATTENTION_PARAMS]


@torch.no_grad()
def load_attention_checkpoint(unet: UNet2DConditionModel, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy CatVTON's attention tensors into ``unet``; every one of the 80 must land exactly once.

    A key that maps to no attn1 parameter, a shape mismatch, or an attn1 parameter left untouched is an
    ``AttentionCheckpointError`` naming it. Returns the UNet parameter names written.
    """
    params = dict(unet.named_parameters())
    expected = set(expected_attention_params(unet))
    landed: dict[str, str] = {}
    for key, target in attention_targets(unet, sorted(state)).items():
        if target not in expected:
            raise AttentionCheckpointError(f"attention checkpoint: key {key!r} -> {target!r} is not an attn1 weight")
        if tuple(state[key].shape) != tuple(params[target].shape):
            raise AttentionCheckpointError(
                f"attention checkpoint: {key!r} has shape {tuple(state[key].shape)}, "
                f"{target} needs {tuple(params[target].shape)}"
            )
        if target in landed and not state[key].is_meta and not torch.equal(state[key], state[landed[target]]):
            raise AttentionCheckpointError(f"attention checkpoint: {key!r} and {landed[target]!r} disagree")
        params[target].copy_(state[key])
        landed[target] = key
    missing = sorted(expected - set(landed))
    if missing:
        raise AttentionCheckpointError(
            f"attention checkpoint: {len(missing)} attn1 tensors missing, e.g. {', '.join(missing[:3])}"
        )
    return sorted(landed)


def checkpoint_keys(unet: torch.nn.Module) -> dict[str, str]:
    """The key set CatVTON's file has (first alias of each shared tensor) -> UNet parameter name."""
    index_map = attention_index_map(unet)
    return {f"{8 * b}.{p}": f"{index_map[8 * b]}.{p}" for b in range(ATTENTION_BLOCKS) for p in ATTENTION_PARAMS}


# ------------------------------------------------------------------------------ building and loading


@dataclass
class CatVTONNetworks:
    unet: UNet2DConditionModel
    vae: AutoencoderKL

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def parameter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for m in (self.unet, self.vae) for p in m.parameters())


def build_unet(config: Mapping[str, Any], device: str | torch.device = "cpu") -> UNet2DConditionModel:
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(dict(config))
    install_processors(unet)
    return unet


def build_vae(config: Mapping[str, Any], device: str | torch.device = "cpu") -> AutoencoderKL:
    with torch.device(device):
        return AutoencoderKL.from_config(dict(config))


def random_state(module: torch.nn.Module, tag: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded recipe weights for every tensor of ``module`` (built on any device, meta included)."""
    return {k: torch.from_numpy(recipe_array(tag, k, tuple(v.shape))).to(dtype) for k, v in module.state_dict().items()}


def random_attention_checkpoint(unet: torch.nn.Module, tag: str) -> dict[str, torch.Tensor]:
    """A CatVTON-layout attention checkpoint (80 keys ``<8k>.to_q.weight``...) with recipe weights."""
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    return {key: torch.from_numpy(recipe_array(tag, key, shapes[p])) for key, p in checkpoint_keys(unet).items()}


def _recipe_tag(source: WeightSource, what: str) -> str:
    return f"catvton-{source.kind}-{source.seed}-{what}"


def load_networks(
    source: WeightSource, device: str | torch.device = "cpu", dtype: Dtype = "float32"
) -> CatVTONNetworks:
    """UNet (with CatVTON's attention weights and processors) and VAE, eval mode, on ``device`` in ``dtype``.

    ``real`` reads the manifest's files (``weights.locate`` raises MissingWeights naming the pull command);
    ``tiny`` / ``random_full`` build the tiny / real configs with seeded recipe weights, including a random
    attention checkpoint in the original file layout, which goes through the same loader.
    """
    configure_precision(device, dtype)
    target = torch_dtype(dtype)
    if source.kind == "real":
        unet_dir = weights.locate(PIPELINE, "unet", source.weights_dir).parent
        weights.locate(PIPELINE, "unet_config", source.weights_dir)
        vae_dir = weights.locate(PIPELINE, "vae", source.weights_dir).parent
        weights.locate(PIPELINE, "vae_config", source.weights_dir)
        unet = UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=target)
        install_processors(unet)
        vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=target)
        attention = load_file(str(weights.locate(PIPELINE, "attention", source.weights_dir)))
    else:
        tiny = source.kind == "tiny"
        unet = build_unet(TINY_UNET if tiny else REAL_UNET, "meta")
        vae = build_vae(TINY_VAE if tiny else REAL_VAE, "meta")
        unet.load_state_dict(random_state(unet, _recipe_tag(source, "unet"), target), strict=True, assign=True)
        vae.load_state_dict(random_state(vae, _recipe_tag(source, "vae"), target), strict=True, assign=True)
        attention = random_attention_checkpoint(unet, _recipe_tag(source, "attention"))
    load_attention_checkpoint(unet, attention)
    del attention
    return CatVTONNetworks(
        unet=unet.to(device).eval().requires_grad_(False), vae=vae.to(device).eval().requires_grad_(False)
    )


__all__ = [
    "AttentionCheckpointError",
    "CatVTONNetworks",
    "SkipCrossAttention",
    "attention_index_map",
    "build_unet",
    "build_vae",
    "checkpoint_keys",
    "load_attention_checkpoint",
    "load_networks",
]
