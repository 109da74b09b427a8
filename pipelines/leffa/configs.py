"""Leffa pose transfer's configuration as data: the real (SDXL-inpainting-0.1-shaped) networks and the tiny
ones of the golden fixtures, next to each other (spec leffa-catvton.md §4, fixtures/README.md §1).

Both UNets are stock diffusers ``UNet2DConditionModel``s built from the SDXL-inpainting UNet config with
``in_channels`` widened to 12 (generative: noise 4 + mask 1 + masked-image latent 4 + DensePose 3) or narrowed
to 4 (reference: the person latent). Leffa switches their ``text_time`` add-embedding off after building them, so
its weights are in the checkpoint but unused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GENERATIVE_IN_CHANNELS = 12
REFERENCE_IN_CHANNELS = 4
PREFIXES = ("vae", "unet_encoder", "unet")  # checkpoint prefixes: VAE, reference UNet, generative UNet

SDXL_INPAINT_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 9,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

SDXL_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# DDPMScheduler.from_pretrained(<sdxl-inpaint>/scheduler, rescale_betas_zero_snr=True): its effective config.
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "variance_type": "fixed_small",
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "rescale_betas_zero_snr": True,
}

# The tiny config of the golden fixtures (fixtures/models/.../unet/config.json and vae/config.json).
TINY_UNET = {
    **SDXL_INPAINT_UNET,
    "block_out_channels": [16, 32, 48],
    "attention_head_dim": [1, 2, 3],
    "transformer_layers_per_block": [1, 2, 3],
    "cross_attention_dim": 32,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 80,
    "norm_num_groups": 8,
    "sample_size": 32,
}
TINY_VAE = {**SDXL_VAE, "block_out_channels": [8, 16, 32, 32], "norm_num_groups": 4, "sample_size": 64}

# Safety checker: diffusers' StableDiffusionSafetyChecker (CLIP ViT-L/14 vision tower + concept embeddings).
TINY_SAFETY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "image_size": 32, "patch_size": 8}  # fmt: skip
TINY_SAFETY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
REAL_SAFETY_VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "image_size": 224, "patch_size": 14}  # fmt: skip
REAL_SAFETY_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}


@dataclass(frozen=True)
class LeffaConfig:
    unet: dict[str, Any]
    vae: dict[str, Any]
    width: int  # the letterbox canvas (W x H); the output has this size
    height: int
    safety_vision: dict[str, Any] = field(default_factory=dict)
    safety_text: dict[str, Any] = field(default_factory=dict)
    safety_projection_dim: int = 768

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8


REAL = LeffaConfig(SDXL_INPAINT_UNET, SDXL_VAE, 768, 1024, REAL_SAFETY_VISION, REAL_SAFETY_TEXT, 768)
TINY = LeffaConfig(TINY_UNET, TINY_VAE, 192, 256, TINY_SAFETY_VISION, TINY_SAFETY_TEXT, 16)
