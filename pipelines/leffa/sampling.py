"""Leffa's denoising arithmetic, per row: CFG with the ``guidance_rescale = guidance_scale`` quirk and the DDPM
posterior step (leading spacing, zero-terminal-SNR betas, ``fixed_small``), written out so that every row of a
batch has its own timestep and noise (diffusers' ``DDPMScheduler.step`` takes one timestep and draws the noise
itself)."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from .configs import SCHEDULER


class DDPM:
    """The schedule of ``DDPMScheduler`` (SDXL-inpainting config, ``rescale_betas_zero_snr=True``)."""

    def __init__(self) -> None:
        self.scheduler = DDPMScheduler.from_config(SCHEDULER)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()  # (1000,), CPU
        self.num_train_timesteps = int(SCHEDULER["num_train_timesteps"])

    def timesteps(self, num_steps: int) -> list[int]:
        """50 steps: 981, 961, ..., 1 (leading spacing, steps_offset 1)."""
        self.scheduler.set_timesteps(num_steps)
        return [int(t) for t in self.scheduler.timesteps]

    def previous(self, t: int, num_steps: int) -> int:
        return t - self.num_train_timesteps // num_steps

    def step(
        self, eps: torch.Tensor, t: list[int], prev_t: list[int], sample: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``DDPMScheduler.step`` for each row (float32): returns (prev_sample, pred_original_sample).

        ``noise`` is the N(0,1) variance noise per row; rows with t = 0 add none (as diffusers)."""
        ac = self.alphas_cumprod
        one = torch.tensor(1.0)
        alpha_t = torch.stack([ac[ti] for ti in t])
        alpha_prev = torch.stack([ac[p] if p >= 0 else one for p in prev_t])
        alpha_t, alpha_prev = (a.to(sample.device).view(-1, 1, 1, 1) for a in (alpha_t, alpha_prev))
        beta_t = 1 - alpha_t
        beta_prev = 1 - alpha_prev
        current_alpha = alpha_t / alpha_prev
        current_beta = 1 - current_alpha
        pred_original = (sample - beta_t ** (0.5) * eps) / alpha_t ** (0.5)
        original_coeff = (alpha_prev ** (0.5) * current_beta) / beta_t
        current_coeff = current_alpha ** (0.5) * beta_prev / beta_t
        prev_sample = original_coeff * pred_original + current_coeff * sample
        variance = torch.clamp((1 - alpha_prev) / (1 - alpha_t) * current_beta, min=1e-20)
        has_noise = torch.tensor([ti > 0 for ti in t], device=sample.device).view(-1, 1, 1, 1)
        prev_sample = torch.where(has_noise, prev_sample + variance ** (0.5) * noise, prev_sample)
        return prev_sample, pred_original


def guide(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: ``eps_cfg = u + s(c - u)``, then ``rescale_noise_cfg(eps_cfg, c, guidance_rescale=s)`` when s > 0
    (Leffa passes the guidance scale as the rescale factor). ``scale``: (B,) float32. Returns (cfg, final)."""
    s = scale.view(-1, 1, 1, 1).to(eps_cond)
    eps_cfg = eps_uncond + s * (eps_cond - eps_uncond)
    dims = list(range(1, eps_cond.ndim))
    std_cond = eps_cond.std(dim=dims, keepdim=True)
    std_cfg = eps_cfg.std(dim=dims, keepdim=True)
    rescaled = eps_cfg * (std_cond / std_cfg)
    final = s * rescaled + (1 - s) * eps_cfg
    return eps_cfg, torch.where(s > 0, final, eps_cfg)
