"""CatVTON's denoising as per-row state plus one batched step function.

A row is one request: its latents (person and garment stacked along **height**), its mask and condition
latents, its guidance scale, its position in its own timestep schedule and its own generator. ``denoise_step``
advances any set of rows by one step with one UNet call, each row at its own timestep, so rows can join
and leave between steps without changing any row's result.

Per row, exactly as CatVTON's ``CatVTONPipeline.__call__``:

- UNet input ``cat([latents, mask, condition], dim=1)`` (9 channels); with ``guidance > 1`` an extra
  unconditional row whose condition has the garment half zeroed in latent space;
- ``eps = u + s * (c - u)``;
- ``DDIMScheduler.step(eps, t, latents, eta=1)`` with the variance noise drawn from the row's generator.

Latents stay float32 whatever the UNet's dtype; random draws are made on the CPU from per-row generators,
so a seed gives the same noise on every device.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cache

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from .configs import SCHEDULER

ETA = 1.0


@cache
def scheduler_for(num_inference_steps: int) -> DDIMScheduler:
    """The SD1.5-inpainting DDIM scheduler ("leading" spacing) set to ``num_inference_steps``.

    Shared per step count: ``DDIMScheduler.step`` reads only its configuration and schedule, never a position,
    so rows at different timesteps can use one instance.
    """
    scheduler = DDIMScheduler.from_config(SCHEDULER)
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


@dataclass
class Row:
    """One request's denoising state. Tensors are (1, C, 2h, w) on the UNet's device."""

    key: int
    latents: torch.Tensor  # float32
    mask: torch.Tensor  # cat([nearest(mask), zeros], H)
    condition: torch.Tensor  # cat([masked person latent, garment latent], H)
    guidance: float
    num_steps: int
    generator: torch.Generator  # CPU; draws the initial noise, then one variance noise per step
    index: int = 0  # the next timestep to run

    @property
    def done(self) -> bool:
        return self.index >= self.num_steps

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0  # CatVTON's do_classifier_free_guidance

    @property
    def timestep(self) -> int:
        return int(scheduler_for(self.num_steps).timesteps[self.index])

    def unconditional(self) -> torch.Tensor:
        """The condition with the garment (bottom) half zeroed, as CatVTON's unconditional branch."""
        half = self.condition.shape[-2] // 2
        return torch.cat([self.condition[..., :half, :], torch.zeros_like(self.condition[..., half:, :])], dim=-2)


def draw(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """N(0, 1) float32 from a CPU generator (``randn_tensor``'s CPU path), then moved to ``device``."""
    return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32).to(device)


def unet_input(rows: list[Row], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, list[Row]]:
    """(sample, per-row timesteps, row order): unconditional rows of the CFG rows first, then every
    conditional row (CatVTON's [uncond, cond] order)."""
    order = [r for r in rows if r.cfg] + rows
    conditions = [r.unconditional() for r in rows if r.cfg] + [r.condition for r in rows]
    sample = torch.cat(
        [torch.cat([r.latents for r in order]), torch.cat([r.mask for r in order]), torch.cat(conditions)], dim=1
    ).to(dtype)
    timesteps = torch.tensor([r.timestep for r in order], device=sample.device, dtype=torch.long)
    return sample, timesteps, order


def predict_noise(unet: UNet2DConditionModel, rows: list[Row]) -> list[torch.Tensor]:
    """The guided noise prediction of each row (one UNet call for all of them)."""
    sample, timesteps, _ = unet_input(rows, unet.dtype)
    eps = unet(sample, timesteps, encoder_hidden_states=None, return_dict=False)[0].float()
    n_uncond = sum(r.cfg for r in rows)
    uncond = iter(eps[:n_uncond].split(1))
    guided = []
    for row, cond in zip(rows, eps[n_uncond:].split(1), strict=True):
        if row.cfg:
            u = next(uncond)
            guided.append(u + row.guidance * (cond - u))
        else:
            guided.append(cond)
    return guided


def ddim_step(row: Row, eps: torch.Tensor) -> None:
    """Advance one row by one DDIM (eta = 1) step, its variance noise drawn from its generator."""
    noise = draw(tuple(row.latents.shape), row.generator, row.latents.device)
    out = scheduler_for(row.num_steps).step(eps, row.timestep, row.latents, eta=ETA, variance_noise=noise)
    row.latents = out.prev_sample
    row.index += 1


@torch.inference_mode()
def denoise_step(unet: UNet2DConditionModel, rows: list[Row]) -> None:
    """One step of every unfinished row: rows of equal latent shape share one UNet call."""
    groups: dict[tuple[int, ...], list[Row]] = defaultdict(list)
    for row in rows:
        if not row.done:
            groups[tuple(row.latents.shape)].append(row)
    for group in groups.values():
        for row, eps in zip(group, predict_noise(unet, group), strict=True):
            ddim_step(row, eps)
