"""The SDXL parts of PuLID: UNet (SDXL-Lightning 4-step weights), VAE, the two CLIP text encoders and their
tokenizers, and the sampler, built from configs (tiny / random_full) or loaded from the manifest's files.

Configs are data: the real SDXL-base ones (as in its ``*/config.json``) next to the tiny ones of the
reference fixtures. Tiny text encoders use a byte-level CLIP BPE vocabulary built here (no merges), so the
real tokenizer class runs without downloaded files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

import weights

PIPELINE = "pulid"
MAX_TOKENS = 77

UNET_REAL: dict[str, Any] = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816, "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
}  # fmt: skip
# the reference fixtures' tiny UNet: SDXL's structure at 32/48/64 channels, cross-attention 64
UNET_TINY: dict[str, Any] = {
    **UNET_REAL, "sample_size": 16, "block_out_channels": [32, 48, 64], "attention_head_dim": [2, 3, 4],
    "transformer_layers_per_block": [1, 2, 2], "cross_attention_dim": 64, "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 80, "norm_num_groups": 16, "addition_embed_type_num_heads": 64,
}  # fmt: skip
VAE_REAL: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.13025,
    "force_upcast": True, "act_fn": "silu",
}  # fmt: skip
VAE_TINY: dict[str, Any] = {**VAE_REAL, "block_out_channels": [8, 16, 16, 16], "layers_per_block": 1,
                            "norm_num_groups": 8, "sample_size": 128}  # fmt: skip
TEXT_REAL: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768,
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}  # fmt: skip
TEXT_2_REAL: dict[str, Any] = {
    **TEXT_REAL, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
    "hidden_act": "gelu", "projection_dim": 1280,
}  # fmt: skip
_TINY_TEXT = {"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 514}
TEXT_TINY: dict[str, Any] = {**TEXT_REAL, **_TINY_TEXT, "hidden_size": 32, "projection_dim": 32}
TEXT_2_TINY: dict[str, Any] = {**TEXT_2_REAL, **_TINY_TEXT, "hidden_size": 32, "projection_dim": 32}
# SDXL base's scheduler_config.json (EulerDiscrete); PuLID builds DPM-Solver++ 2M from it
SCHEDULER_BASE: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}  # fmt: skip


@dataclass(frozen=True)
class SDXLConfig:
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]


REAL = SDXLConfig(UNET_REAL, VAE_REAL, TEXT_REAL, TEXT_2_REAL)
TINY = SDXLConfig(UNET_TINY, VAE_TINY, TEXT_TINY, TEXT_2_TINY)


def make_scheduler(
    base_config: dict[str, Any] | None = None, final_sigma_min: bool = True
) -> DPMSolverMultistepScheduler:
    """The original's swap: DPM-Solver++ 2M from SDXL's config with trailing timesteps. ``final_sigma_min``
    keeps diffusers 0.25's last step (to sigma_min), which the original ran; newer diffusers default to 0."""
    return DPMSolverMultistepScheduler.from_config(
        base_config or SCHEDULER_BASE,
        timestep_spacing="trailing",
        final_sigmas_type="sigma_min" if final_sigma_min else "zero",
    )


def byte_level_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes (256 symbols, each also with ``</w>``, plus the two specials)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(c) for c in printable] + [chr(256 + n) for n in range(len(extra))]  # GPT-2's bytes_to_unicode
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": 256 + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS, pad_token=pad_token)


@dataclass
class SDXLNetworks:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    scheduler_config: dict[str, Any]


def build_unet(config: dict[str, Any], device: str | torch.device = "cpu") -> UNet2DConditionModel:
    with torch.device(device):
        return UNet2DConditionModel.from_config(config)


def build_sdxl(config: SDXLConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> SDXLNetworks:
    """Seeded random weights at ``config`` (tiny / random_full) on CPU: the UNet and text encoders are created
    in ``dtype`` (a full-size float32 UNet alone is 10 GB of host memory), the VAE in float32."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            unet = build_unet(config.unet)
            text = CLIPTextModel(CLIPTextConfig(**config.text_encoder))
            text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config.text_encoder_2))
        finally:
            torch.set_default_dtype(previous)
        vae = AutoencoderKL.from_config(config.vae)
    # byte-level symbols for tiny and random_full alike (prompts are padded to 77 tokens either way)
    tokenizer, tokenizer_2 = byte_level_tokenizer(), byte_level_tokenizer(pad_token="!")
    return SDXLNetworks(unet, vae, text, text_2, tokenizer, tokenizer_2, dict(SCHEDULER_BASE))


def load_sdxl(weights_dir: Path | None) -> SDXLNetworks:
    """The real files of the manifest: SDXL-base configs, text encoders, tokenizers and VAE (fp16 variant),
    the Lightning UNet loaded strictly into SDXL's UNet config. UNet and text encoders stay in the files'
    float16 on the host (``networks.place`` casts them to the serving dtype), the VAE is float32."""
    from safetensors.torch import load_file

    def locate(key: str) -> Path:
        return weights.locate(PIPELINE, key, weights_dir)

    unet = build_unet(json.loads(locate("unet_config").read_text()), "meta")
    unet.load_state_dict(load_file(str(locate("unet"))), strict=True, assign=True)
    vae = AutoencoderKL.from_pretrained(locate("vae").parent, variant="fp16", torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(locate("text_encoder").parent, variant="fp16", dtype=torch.float16)
    text_2 = CLIPTextModelWithProjection.from_pretrained(
        locate("text_encoder_2").parent, variant="fp16", dtype=torch.float16
    )
    tokenizer = CLIPTokenizer.from_pretrained(locate("tokenizer_vocab").parent)
    tokenizer_2 = CLIPTokenizer.from_pretrained(locate("tokenizer_2_vocab").parent)
    scheduler_config = json.loads(locate("scheduler_config").read_text())
    return SDXLNetworks(unet, vae, text, text_2, tokenizer, tokenizer_2, scheduler_config)


@torch.no_grad()
def encode_prompt(nets: SDXLNetworks, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL prompt encoding: penultimate hidden states of both encoders side by side [1,77,768+1280] and
    the pooled projection of encoder 2 [1,1280] (diffusers' ``encode_prompt`` without clip_skip)."""
    embeds, pooled = [], None
    for tokenizer, encoder in ((nets.tokenizer, nets.text_encoder), (nets.tokenizer_2, nets.text_encoder_2)):
        ids = tokenizer(prompt, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
        out = encoder(ids.input_ids.to(encoder.device), output_hidden_states=True)
        if out[0].ndim == 2:
            pooled = out[0]
        embeds.append(out.hidden_states[-2])
    assert pooled is not None
    return torch.cat(embeds, dim=-1).to(nets.text_encoder_2.dtype), pooled.to(nets.text_encoder_2.dtype)
