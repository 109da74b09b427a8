"""PuLID v1 on SDXL-Lightning (``fal-ai/pulid``): identity-preserving generation from reference faces.

The algorithm, per request:

1. prepare (CPU thread): fetch at most 4 reference images (the first is the main face), downscale each to
   a 1024 px long edge, and for each one not in the ID-token cache: detect faces (largest for ArcFace,
   centre-most for alignment), take the raw ArcFace feature and the 512 px aligned face. No face: 422
   naming the reference.
2. begin (device): ID tokens per reference (BiSeNet parsing -> grey/white face -> EVA02-CLIP ->
   IDEncoder; cached by image content), appended along the token axis (``id_mix``: 10 tokens per
   auxiliary image instead of 5); SDXL prompt encoding of the prompt and the negative prompt; one
   generator seeded with the request's seed draws the noise of image 0, 1, ... in turn.
3. step: one UNet call for every row (image) of every request sharing (width, height, steps); each row
   has its own timestep, its own DPM-Solver++ 2M state (it keeps the previous model output), its own
   guidance, and its own ID tokens / mode / id_scale in the 70 ``attn2`` processors. Guidance > 1 gives
   the row two UNet rows [negative, positive]; at <= 1 one row, with the original's folding of the id
   tokens (``id_attention.row_sequences``).
4. finish: float32 VAE decode per image, PNG.

Rows join and leave at step boundaries (``merge`` / ``drop``): a row's result never depends on its
neighbours in the batch.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.image_processor import VaeImageProcessor
from pydantic import BaseModel

from pipelines.common.per_item import finish_item
from pipelines.common.schema_types import Image, resolve_image_size
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

from . import face_prep
from .faces import ReferenceFace, parse_labels
from .id_attention import IDConditioning, row_sequences
from .id_cache import IdTokenCache, image_digest
from .id_embedding import MAX_AUX_REFERENCES, concat_references, cond_tokens, eva_from_parsed, uncond_tokens
from .networks import PuLIDNetworks, load_networks
from .schema import PuLIDInput, PuLIDOutput
from .sdxl import encode_prompt, make_scheduler

LATENT_FACTOR = 8
NO_FACE_MESSAGE = "No face detected in the reference image."
PROMPT_CACHE_SIZE = 32
MODE_NAMES = {"fidelity": "fidelity", "extreme style": "extreme style"}


@dataclass(frozen=True)
class PuLIDSettings:
    """Parity switches (defaults: the original) and batching limits."""

    eva_antialias: bool = False  # torchvision >= 0.17's default would be True; the original had none
    final_sigma_min: bool = True  # diffusers 0.25's last step; False: newer diffusers' sigma 0
    max_unet_rows: int = 16  # UNet batch rows per call (a CFG image takes 2); larger batches are split
    cache_size: int = 256


@dataclass
class Conditions:
    """One request's conditioning, on the device: UNet rows per image are [negative, positive] with CFG."""

    embeds: torch.Tensor  # [1 or 2, 77, 2048]
    pooled: torch.Tensor  # [1 or 2, 1280]
    time_ids: torch.Tensor  # [1 or 2, 6]
    id_sequences: list[torch.Tensor | None]  # per UNet row of one image: its id key sequence (zeros included)


@dataclass
class ItemState:
    key: int
    seed: int
    total: int
    guidance: float
    cfg: bool
    mode: str
    id_scale: float
    cond: Conditions
    rows: int


@dataclass
class Row:
    """One output image: its latents and its own sampler."""

    key: int
    index: int
    latents: torch.Tensor  # [1,4,h,w]
    scheduler: DPMSolverMultistepScheduler
    step: int = 0


@dataclass
class PuLIDState:
    items: dict[int, ItemState] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)


class PuLIDPipeline(StepwisePipeline):
    endpoint_id = "fal-ai/pulid"
    Input = PuLIDInput
    Output = PuLIDOutput
    max_batch: ClassVar[int] = 4
    gpu_dtype: ClassVar[Dtype] = "float16"  # UNet and text encoders, as the original
    weights_manifest: ClassVar[str | None] = "pulid"
    max_wait_ms: ClassVar[int] = 20

    def __init__(self, nets: PuLIDNetworks, settings: PuLIDSettings | None = None) -> None:
        self.nets = nets
        self.settings = settings or PuLIDSettings()
        self.cache = IdTokenCache(self.settings.cache_size)
        self.image_processor = VaeImageProcessor(vae_scale_factor=LATENT_FACTOR)
        self._uncond: torch.Tensor | None = None
        self._prompts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # insertion order = LRU order

    @classmethod
    def load(cls, source: WeightSource, device: str = "cpu", dtype: Dtype = "float32") -> PuLIDPipeline:
        return cls(load_networks(source, device, dtype))

    # ---------------------------------------------------------------- scheduling keys

    def batch_key(self, inp: BaseModel) -> Hashable:
        assert isinstance(inp, PuLIDInput)
        return (*resolve_image_size(inp.image_size), inp.num_inference_steps)

    def rows(self, inp: BaseModel) -> int:
        assert isinstance(inp, PuLIDInput)
        return inp.num_images

    def total_steps(self, inp: BaseModel) -> int:
        assert isinstance(inp, PuLIDInput)
        return inp.num_inference_steps

    # ---------------------------------------------------------------- 1. prepare (CPU thread)

    def prepare(self, inp: BaseModel, load_image: ImageLoader) -> Prepared:
        assert isinstance(inp, PuLIDInput)
        width, height = resolve_image_size(inp.image_size)
        if width % LATENT_FACTOR or height % LATENT_FACTOR:
            raise ItemError.invalid_input(["image_size"], "width and height must be multiples of 8")
        prepared = Prepared(input=inp)
        references: list[tuple[str, torch.Tensor | ReferenceFace]] = []
        for i, ref in enumerate(inp.reference_images[: 1 + MAX_AUX_REFERENCES]):
            loc: list[str | int] = ["reference_images", i, "image_url"]
            img = face_prep.resize_long_edge(np.asarray(load_image(ref.image_url, loc).convert("RGB")))
            digest = image_digest(img)
            cached = self.cache.get(digest)
            if cached is not None:
                references.append((digest, cached))
                continue
            face = self.nets.faces.analyse(img)
            if face is None:
                raise ItemError.invalid_input(loc, NO_FACE_MESSAGE, "face_not_detected")
            references.append((digest, face))  # keeps 512 px crops only, not the images
        prepared.extra["references"] = references
        return prepared

    # ---------------------------------------------------------------- 2. begin (device)

    @torch.inference_mode()
    def begin(self, items: list[Prepared], ctx: RunContext) -> PuLIDState:
        state = PuLIDState()
        for item in items:
            inp = item.input
            assert isinstance(inp, PuLIDInput)
            tokens = concat_references([self._reference_tokens(d, r) for d, r in item.extra["references"]], inp.id_mix)
            self.start_item(state, item.key, inp, ctx.seed(item.key), self.prompt_conditions(inp), tokens)
        return state

    def prompt_conditions(self, inp: PuLIDInput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(negative embeds, negative pooled, positive embeds, positive pooled)."""
        return (*self._encode(inp.negative_prompt), *self._encode(inp.prompt))

    def _encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL prompt encoding, remembered for the last prompts (the default negative prompt above all)."""
        cached = self._prompts.pop(prompt, None)
        if cached is None:
            cached = encode_prompt(self.nets.sdxl, prompt)
        self._prompts[prompt] = cached
        while len(self._prompts) > PROMPT_CACHE_SIZE:
            self._prompts.pop(next(iter(self._prompts)))
        return cached

    def start_item(
        self,
        state: PuLIDState,
        key: int,
        inp: PuLIDInput,
        seed: int,
        prompts: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        id_tokens: torch.Tensor | None,
        noise: list[torch.Tensor] | None = None,
    ) -> None:
        """Add one request's rows to ``state``. ``noise`` overrides the seeded draws (CPU fixtures cannot
        reproduce CUDA noise)."""
        device, dtype = self.nets.device, self.nets.dtype
        width, height = resolve_image_size(inp.image_size)
        cfg = inp.guidance_scale > 1.0
        neg, neg_pooled, pos, pos_pooled = prompts
        embeds = torch.cat([neg, pos]) if cfg else pos
        pooled = torch.cat([neg_pooled, pos_pooled]) if cfg else pos_pooled
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=embeds.dtype, device=device)
        sequences: list[torch.Tensor | None] = [None] * (2 if cfg else 1)
        mode = MODE_NAMES[inp.mode]
        if id_tokens is not None:
            sequences = list(row_sequences(id_tokens.to(device=device, dtype=torch.float32), mode, cfg))
        cond = Conditions(
            embeds.to(device, dtype), pooled.to(device, dtype), time_ids.repeat(len(sequences), 1).to(dtype), sequences
        )
        state.items[key] = ItemState(
            key, seed, inp.num_inference_steps, inp.guidance_scale, cfg, mode, inp.id_scale, cond, inp.num_images
        )

        template = make_scheduler(self.nets.sdxl.scheduler_config, self.settings.final_sigma_min)
        template.set_timesteps(inp.num_inference_steps, device=device)
        shape = (1, 4, height // LATENT_FACTOR, width // LATENT_FACTOR)
        generator = torch.Generator(device=device).manual_seed(seed)
        for j in range(inp.num_images):
            # the original seeds once per request and draws image j's noise as the j-th draw of that stream
            draw = torch.randn(shape, generator=generator, device=device, dtype=dtype)
            latents = (noise[j].to(device, dtype) if noise is not None else draw) * template.init_noise_sigma
            state.rows.append(Row(key, j, latents, copy.deepcopy(template)))

    def _reference_tokens(self, digest: str, ref: torch.Tensor | ReferenceFace) -> torch.Tensor:
        """[2,10,C] = [uncond, cond] for one reference, through the cache."""
        if isinstance(ref, torch.Tensor):
            return ref
        cached = self.cache.get(digest)
        if cached is not None:
            return cached
        nets = self.nets
        face01 = face_prep.to_tensor01(ref.aligned).to(nets.device)
        labels = parse_labels(nets.parser, face01)
        features = eva_from_parsed(nets.eva, face01, labels, self.settings.eva_antialias)
        arcface = torch.from_numpy(ref.arcface).to(nets.device).unsqueeze(0)
        tokens = torch.cat(
            [self._uncond_tokens(features.hidden[0].shape), cond_tokens(nets.adapter.id_adapter, arcface, features)]
        )
        self.cache.put(digest, tokens)
        return tokens

    def _uncond_tokens(self, hidden_shape: torch.Size) -> torch.Tensor:
        if self._uncond is None:
            self._uncond = uncond_tokens(self.nets.adapter.id_adapter, hidden_shape, self.nets.device)
        return self._uncond

    # ---------------------------------------------------------------- 3. step (device)

    @torch.inference_mode()
    def step(self, state: PuLIDState, ctx: RunContext) -> None:
        active = [r for r in state.rows if r.step < state.items[r.key].total]
        chunk: list[Row] = []
        used = 0
        for row in active:
            need = 2 if state.items[row.key].cfg else 1
            if chunk and used + need > self.settings.max_unet_rows:
                self._denoise(state, chunk)
                chunk, used = [], 0
            chunk.append(row)
            used += need
        if chunk:
            self._denoise(state, chunk)
        for key in dict.fromkeys(r.key for r in active):
            ctx.progress(min(r.step for r in state.rows if r.key == key), state.items[key].total, item=key)

    def _denoise(self, state: PuLIDState, rows: list[Row]) -> None:
        """One UNet call for ``rows``; each row then advances its own sampler by one step."""
        latents, timesteps, embeds, pooled, time_ids = [], [], [], [], []
        sequences: list[torch.Tensor | None] = []
        modes: list[str] = []
        scales: list[float] = []
        for row in rows:
            item = state.items[row.key]
            n = len(item.cond.id_sequences)
            t = row.scheduler.timesteps[row.step]
            latents += [row.latents] * n
            timesteps += [t] * n
            embeds.append(item.cond.embeds)
            pooled.append(item.cond.pooled)
            time_ids.append(item.cond.time_ids)
            sequences += item.cond.id_sequences
            modes += [item.mode] * n
            scales += [item.id_scale] * n
        unet = self.nets.sdxl.unet
        noise_pred = unet(
            torch.cat(latents),
            torch.stack(timesteps),
            encoder_hidden_states=torch.cat(embeds),
            added_cond_kwargs={"text_embeds": torch.cat(pooled), "time_ids": torch.cat(time_ids)},
            cross_attention_kwargs={"id_cond": IDConditioning.build(sequences, modes, scales, self.nets.device)},
            return_dict=False,
        )[0]
        offset = 0
        for row in rows:
            item = state.items[row.key]
            n = len(item.cond.id_sequences)
            pred = noise_pred[offset : offset + n]
            offset += n
            if item.cfg:
                uncond, text = pred.chunk(2)
                pred = uncond + item.guidance * (text - uncond)
            t = row.scheduler.timesteps[row.step]
            row.latents = row.scheduler.step(pred, t, row.latents, return_dict=False)[0]
            row.step += 1

    # ---------------------------------------------------------------- 4. finish, and the row bookkeeping

    def done(self, state: PuLIDState) -> list[int]:
        return [
            key for key, item in state.items.items() if all(r.step >= item.total for r in state.rows if r.key == key)
        ]

    @torch.inference_mode()
    def finish(self, state: PuLIDState, keys: list[int], ctx: RunContext) -> list[Result]:
        results: list[Result] = []
        for key in keys:
            item = state.items[key]
            rows = sorted((r for r in state.rows if r.key == key), key=lambda r: r.index)
            results.append(finish_item(key, lambda rows=rows, item=item: self._save(rows, item, ctx), "decode"))
        self.drop(state, keys)
        return results

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """float32 VAE decode of one image's latents -> [1,3,H,W] in [-1,1]."""
        vae = self.nets.sdxl.vae
        return vae.decode(latents.float() / vae.config.scaling_factor, return_dict=False)[0]

    def _save(self, rows: list[Row], item: ItemState, ctx: RunContext) -> BaseModel:
        images = []
        for row in rows:  # one at a time, as the original's sequential calls: the fp32 decode is the peak
            pil = self.image_processor.postprocess(self.decode(row.latents), output_type="pil")[0]
            images.append(Image(**ctx.save_image(item.key, pil, "png")))
        return PuLIDOutput(images=images, seed=item.seed)

    def merge(self, state: PuLIDState, other: PuLIDState) -> PuLIDState:
        state.items.update(other.items)
        state.rows.extend(other.rows)
        return state

    def drop(self, state: PuLIDState, keys: list[int]) -> None:
        gone = set(keys)
        state.rows[:] = [r for r in state.rows if r.key not in gone]
        for key in gone:
            state.items.pop(key, None)

    def keys(self, state: PuLIDState) -> list[int]:
        return list(state.items)

    # ---------------------------------------------------------------- memory budget (ARCHITECTURE.md §4.2)

    def resident_bytes(self) -> int:
        """Weights (each tensor once: the ID processors live in both the UNet and the adapter) and the cache."""
        seen: dict[int, int] = {}
        for module in self.nets.torch_modules():
            for t in (*module.parameters(), *module.buffers()):
                seen[t.data_ptr()] = t.numel() * t.element_size()
        return sum(seen.values()) + self.cache.nbytes()

    def row_bytes(self, inp: BaseModel) -> int:
        """Estimated (not measured): UNet activations per image (x2 with CFG) plus one fp32 VAE decode."""
        assert isinstance(inp, PuLIDInput)
        width, height = resolve_image_size(inp.image_size)
        latent_px = (width // LATENT_FACTOR) * (height // LATENT_FACTOR)
        unet_rows = 2 if inp.guidance_scale > 1.0 else 1
        unet = latent_px * unet_rows * 48 * 1024 * self.nets.dtype.itemsize // 2
        vae = width * height * 3 * 1024  # the decoder's 128-channel fp32 maps at full size, a few alive at once
        return unet * inp.num_images + vae
