"""CatVTON virtual try-on (``fal-ai/cat-vton``), as CatVTON's app and ``CatVTONPipeline`` run it.

Per request:

1. prepare (CPU thread): validate the size, fetch both images, ``resize_and_crop`` the person and
   ``resize_and_padding`` the garment to W x H (only that resolution is kept).
2. begin (device): AutoMasker mask for ``cloth_type`` (DensePose + SCHP LIP/ATR, batched), PIL blur radius 9,
   binarised at 0.5; VAE-encode the masked person and the garment; stack them along height with the
   mask; draw the initial noise. One denoising row per request (denoise.py).
3. step (device, repeated): one UNet call for all rows, CFG with the garment zeroed in latent space,
   DDIM eta = 1, each row at its own timestep.
4. finish: decode the top (person) half, save a PNG.

Randomness: every draw comes from the request's seed (a documented improvement on the original, whose VAE
samples use the global RNG). Two CPU generators per request: ``seed`` draws the initial noise and the DDIM
variance noise (CatVTON's ``generator``, in its order), ``seed + 1`` the two VAE posterior samples (the
original's global RNG). A seed therefore gives the same image alone, in a batch, or joined mid-flight.

A mask in which the AutoMasker found nothing to replace is not an error (the original goes on and returns
the person nearly unchanged); the item's log says so.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image
from pydantic import BaseModel

from pipelines.common.per_item import finish_all, finish_item
from pipelines.common.schema_types import Image as ImageOut
from pipelines.contract import (
    Dtype,
    ImageLoader,
    ItemError,
    Prepared,
    Result,
    RunContext,
    StepwisePipeline,
    WeightSource,
)

from .automasker import cloth_agnostic_mask
from .denoise import Row, denoise_step, draw
from .masking import AutoMasker
from .networks import CatVTONNetworks, load_networks
from .preprocess import (
    blur_mask,
    image_tensor,
    mask_tensor,
    masked_image,
    resize_and_crop,
    resize_and_padding,
    target_size,
)
from .schema import CatVTONInput, CatVTONOutput

PERSON, GARMENT = "human_image_url", "garment_image_url"
LOG_EVERY = 10  # steps between "step i/N" log lines
# Peak activation bytes per output pixel and row in 16-bit: the paper's 5.94 GB at 1024x768 (bf16, batch 1)
# less ~1.9 GB of weights, about 5.1 kB per pixel. An estimate until measured on a GPU.
ROW_BYTES_PER_PIXEL_16BIT = 5_100
MASKER_DTYPE: Dtype = "float32"  # the original runs DensePose and SCHP in float32; labels are discrete decisions


def generator_seeds(seed: int) -> tuple[int, int]:
    """(noise generator seed, VAE generator seed) of a request: any integer ``seed`` is accepted (torch takes
    64-bit seeds) and the VAE samples get a stream distinct from the noise's."""
    return seed % 2**64, (seed + 1) % 2**64


@dataclass
class TryOnBatch:
    """A running batch: one ``Row`` per request, plus requests that failed in ``begin``."""

    rows: list[Row] = field(default_factory=list)
    failed: dict[int, ItemError] = field(default_factory=dict)


# ------------------------------------------------------------------------------ tensors of one batch


def encode_conditions(
    vae: AutoencoderKL,
    people: torch.Tensor,
    masks: torch.Tensor,
    garments: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked person latents, garment latents), each (B, 4, H/8, W/8) float32, scaled by 0.18215.

    One VAE call for both images of every request; each request's posterior samples come from its own
    generator (masked person first, then garment, as the original's two ``latent_dist.sample()``).
    """
    n = len(people)
    x = torch.cat([masked_image(people, masks), garments]).to(vae.device, vae.dtype)
    dist = vae.encode(x).latent_dist
    mean, std = dist.mean.float(), dist.std.float()
    shape = (1, *mean.shape[1:])
    eps = [draw(shape, g, mean.device) for g in generators for _ in range(2)]  # per item: person, garment
    eps = torch.cat(eps[0::2] + eps[1::2])
    latents = (mean + std * eps) * vae.config.scaling_factor
    return latents[:n], latents[n:]


def start_rows(
    vae: AutoencoderKL,
    keys: Sequence[int],
    people: Sequence[Image.Image],
    garments: Sequence[Image.Image],
    masks: Sequence[np.ndarray],
    guidance: Sequence[float],
    num_steps: int,
    seeds: Sequence[tuple[int, int]],
) -> list[Row]:
    """Rows for requests of one size: encode, stack along height, draw the initial noise.

    ``masks`` are the AutoMasker's 0/255 masks; ``seeds`` are (noise seed, VAE seed) per request.
    """
    device = vae.device
    person = torch.cat([image_tensor(p) for p in people])
    garment = torch.cat([image_tensor(g) for g in garments])
    mask = torch.cat([mask_tensor(blur_mask(m)) for m in masks])
    vae_generators = [torch.Generator().manual_seed(s[1]) for s in seeds]
    masked_latent, garment_latent = encode_conditions(vae, person, mask, garment, vae_generators)
    mask_latent = F.interpolate(mask.to(device), size=masked_latent.shape[-2:], mode="nearest")
    rows = []
    for i, key in enumerate(keys):
        generator = torch.Generator().manual_seed(seeds[i][0])
        condition = torch.cat([masked_latent[i : i + 1], garment_latent[i : i + 1]], dim=-2)
        latents = draw(tuple(condition.shape), generator, device)  # init_noise_sigma is 1 for DDIM
        m = mask_latent[i : i + 1]
        rows.append(
            Row(key, latents, torch.cat([m, torch.zeros_like(m)], dim=-2), condition, guidance[i], num_steps, generator)
        )
    return rows


@torch.inference_mode()
def decode(vae: AutoencoderKL, rows: Sequence[Row]) -> np.ndarray:
    """The person (top) half of each row's latents as (B, H, W, 3) uint8 images."""
    half = rows[0].latents.shape[-2] // 2
    z = torch.cat([r.latents[..., :half, :] for r in rows]) / vae.config.scaling_factor
    image = vae.decode(z.to(vae.dtype), return_dict=False)[0].float()
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    return (image * 255).round().to(torch.uint8).cpu().numpy()


# ------------------------------------------------------------------------------ the endpoint


class CatVTONPipeline(StepwisePipeline):
    endpoint_id = "fal-ai/cat-vton"
    Input = CatVTONInput
    Output = CatVTONOutput
    max_batch: ClassVar[int] = 4
    gpu_dtype: ClassVar[Dtype] = "bfloat16"  # as the original runs
    weights_manifest: ClassVar[str | None] = "catvton"
    max_wait_ms: ClassVar[int] = 50

    def __init__(self, networks: CatVTONNetworks, masker: AutoMasker) -> None:
        self.networks = networks
        self.masker = masker

    @classmethod
    def load(cls, source: WeightSource, device: str = "cpu", dtype: Dtype = "float32") -> CatVTONPipeline:
        return cls(load_networks(source, device, dtype), AutoMasker.load(source, device, MASKER_DTYPE))

    # -- batching and memory

    def batch_key(self, inp: BaseModel) -> Hashable:
        assert isinstance(inp, CatVTONInput)
        try:
            return (*target_size(inp.image_size), inp.num_inference_steps)
        except ItemError:
            return ("invalid",)  # fails alone in prepare

    def total_steps(self, inp: BaseModel) -> int:
        assert isinstance(inp, CatVTONInput)
        return inp.num_inference_steps

    def resident_bytes(self) -> int:
        return self.networks.parameter_bytes() + self.masker.parameter_bytes()

    def row_bytes(self, inp: BaseModel) -> int:
        assert isinstance(inp, CatVTONInput)
        width, height = target_size(inp.image_size)
        return width * height * ROW_BYTES_PER_PIXEL_16BIT * self.networks.dtype.itemsize // 2

    # -- 1. prepare (CPU thread)

    def prepare(self, inp: BaseModel, load_image: ImageLoader) -> Prepared:
        assert isinstance(inp, CatVTONInput)
        size = target_size(inp.image_size)  # 422 before anything is fetched
        prepared = super().prepare(inp, load_image)
        prepared.images = {
            PERSON: resize_and_crop(prepared.images[PERSON].convert("RGB"), size),
            GARMENT: resize_and_padding(prepared.images[GARMENT].convert("RGB"), size),
        }
        return prepared

    # -- 2. begin (device): mask, encode, initial noise

    @torch.inference_mode()
    def begin(self, items: list[Prepared], ctx: RunContext) -> TryOnBatch:
        state = TryOnBatch()
        inputs: list[CatVTONInput] = [p.input for p in items]  # type: ignore[misc]
        people = [p.images[PERSON] for p in items]
        label_maps = self.masker.label_maps(people)
        masks: dict[int, np.ndarray] = {}
        for item, inp, maps in zip(items, inputs, label_maps, strict=True):
            result = finish_item(item.key, lambda maps=maps, inp=inp: self._mask(maps, inp), "AutoMasker")
            if isinstance(result, ItemError):
                state.failed[item.key] = result
                continue
            masks[item.key] = result
            covered = float((result > 0).mean())
            ctx.log(f"AutoMasker: {inp.cloth_type} mask covers {covered:.0%} of the image", item=item.key)
            if not covered:
                ctx.log(f"AutoMasker found no {inp.cloth_type} region to replace", item=item.key, level="WARNING")

        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, item in enumerate(items):
            if item.key in masks:
                by_size.setdefault((*people[i].size, inputs[i].num_inference_steps), []).append(i)
        for (*_, steps), idx in by_size.items():
            seeds = [generator_seeds(ctx.seed(items[i].key)) for i in idx]
            state.rows += start_rows(
                self.networks.vae,
                [items[i].key for i in idx],
                [people[i] for i in idx],
                [items[i].images[GARMENT] for i in idx],
                [masks[items[i].key] for i in idx],
                [inputs[i].guidance_scale for i in idx],
                steps,
                seeds,
            )
        for item in items:
            item.images.clear()  # the PIL images are no longer needed
        return state

    def _mask(self, maps: tuple[np.ndarray, np.ndarray, np.ndarray], inp: CatVTONInput) -> np.ndarray:
        return cloth_agnostic_mask(*maps, cloth_type=inp.cloth_type)

    # -- 3. step (device)

    def step(self, state: TryOnBatch, ctx: RunContext) -> None:
        rows = [r for r in state.rows if not r.done]
        if not rows:
            return
        denoise_step(self.networks.unet, rows)
        for row in rows:
            if row.index % LOG_EVERY == 0 or row.done:
                ctx.log(f"denoising step {row.index}/{row.num_steps}", item=row.key)
            ctx.progress(row.index, row.num_steps, item=row.key)

    # -- 4. finish (device, then CPU threads)

    def finish(self, state: TryOnBatch, keys: list[int], ctx: RunContext) -> list[Result]:
        results: dict[int, Result] = {k: state.failed.pop(k) for k in keys if k in state.failed}
        rows = [r for r in state.rows if r.key in keys and r.key not in results]
        self.drop(state, [r.key for r in rows])
        groups: dict[tuple[int, ...], list[Row]] = {}
        for row in rows:
            groups.setdefault(tuple(row.latents.shape), []).append(row)
        for group in groups.values():
            for row in group:
                ctx.log("decoding", item=row.key)
            images = decode(self.networks.vae, group)
            saved = finish_all(
                list(zip(group, images, strict=True)),
                lambda _, item: CatVTONOutput(image=ImageOut(**ctx.save_image(item[0].key, item[1], "png"))),
                "saving the image",
            )
            results.update((row.key, out) for row, out in zip(group, saved, strict=True))
        return [results[k] for k in keys]

    # -- the running batch

    def done(self, state: TryOnBatch) -> list[int]:
        return [*state.failed, *(r.key for r in state.rows if r.done)]

    def merge(self, state: TryOnBatch, other: TryOnBatch) -> TryOnBatch:
        state.rows += other.rows
        state.failed.update(other.failed)
        return state

    def drop(self, state: TryOnBatch, keys: list[int]) -> None:
        gone = set(keys)
        state.rows = [r for r in state.rows if r.key not in gone]
        for key in gone:
            state.failed.pop(key, None)

    def keys(self, state: TryOnBatch) -> list[int]:
        return [*state.failed, *(r.key for r in state.rows)]
