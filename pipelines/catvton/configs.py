"""CatVTON's network and scheduler configurations, as plain data.

``REAL_*`` are the configs of the files CatVTON loads: the SD1.5-inpainting ``unet/config.json`` and
``scheduler/scheduler_config.json`` and ``stabilityai/sd-vae-ft-mse``'s ``config.json``. ``TINY_*`` are the
reduced configs of the reference fixtures (``shared/reference/catvton/fixtures/models``): the same module
tree and key set with narrow channels. The scheduler is the same for both.
"""

from __future__ import annotations

from typing import Any

REAL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 9,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
TINY_UNET: dict[str, Any] = {
    **REAL_UNET,
    "block_out_channels": [16, 32, 64, 64],
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
    "sample_size": 32,
}

REAL_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
TINY_VAE: dict[str, Any] = {**REAL_VAE, "block_out_channels": [8, 16, 32, 32], "norm_num_groups": 4, "sample_size": 64}

# SD1.5-inpainting's scheduler config (a PNDM class name in the file; CatVTON loads it as DDIM).
SCHEDULER: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# 16 transformer blocks; each owns 8 consecutive indices of CatVTON's attention ModuleList.
ATTENTION_BLOCKS = 16
ATTENTION_SLOTS = ("", "to_q", "to_k", "to_v", "to_out", "to_out.0", "to_out.1", "processor")
