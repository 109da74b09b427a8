"""Leffa pose transfer (``fal-ai/leffa/pose-transfer``): the person of ``person_image_url`` in the pose of
``pose_image_url`` (spec leffa-catvton.md §4; Leffa's ``leffa_predict(control_type="pose_transfer")``).

Per request:

1. prepare (CPU thread): letterbox both images onto the white canvas (768x1024; cv2 INTER_CUBIC).
2. begin (device, batched): DensePose IUV of the pose canvas with Leffa's encoding (nobody found: 422 naming
   ``pose_image_url``); VAE-encode the person canvas and the masked pose canvas (the mask is all ones, so that
   is a grey image: encoded once and cached); sample both posteriors and the initial noise from a generator
   seeded with the request's seed (the original uses the global RNG there); the condition is
   ``[mask latent (ones), masked-image latent, DensePose nearest-downsampled]``.
3. step (device, batched over requests, each row at its own timestep): reference UNet on ``[zeros, person
   latent]`` records 70 reference features (with ``ref_acceleration``: once, at ``timesteps[n // 2]``, kept per
   row); generative UNet on ``[latent, condition]`` for ``[uncond, cond]`` attends over them; CFG, then the
   ``guidance_rescale = guidance_scale`` quirk; a DDPM step whose noise comes from a second generator seeded
   with the same seed (the original's seeded generator).
4. finish: VAE decode (redone in float32 when a half-precision decode overflows), uint8, safety checker,
   encode.

``ref_acceleration`` is a per-pipeline setting (``FAL_ONPREM_LEFFA_REF_ACCELERATION=1``), off by default as in
the original and on fal.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from pipelines.common.densepose.predictor import DensePose
from pipelines.common.densepose.products import leffa_condition
from pipelines.common.per_item import finish_all
from pipelines.common.schema_types import Image
from pipelines.common.tensors import configure_precision, torch_dtype
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

from .attention import Features, FeaturesComplete
from .networks import LeffaNetworks, load_networks
from .preprocess import letterbox, to_uint8, to_unit_range
from .safety import SafetyChecker
from .sampling import DDPM, guide
from .schema import LeffaPoseTransferInput, LeffaPoseTransferOutput

log = logging.getLogger(__name__)

REF_ACCELERATION_ENV = "FAL_ONPREM_LEFFA_REF_ACCELERATION"
NO_PERSON_MESSAGE = "No person was detected in the pose image."


@dataclass
class Row:
    """One request in the running batch: its own seed, generators, timesteps and latents."""

    key: int
    input: LeffaPoseTransferInput
    seed: int
    timesteps: list[int] = field(default_factory=list)
    index: int = 0  # steps done
    latents: torch.Tensor | None = None  # (1, 4, h, w) float32
    condition: torch.Tensor | None = None  # (1, 8, h, w) float32: mask, masked-image latent, DensePose
    ref_latent: torch.Tensor | None = None  # (1, 4, h, w) float32
    step_generator: torch.Generator | None = None
    ref_features: Features | None = None  # (2, tokens, C) [uncond, cond] per block, with ref_acceleration
    error: ItemError | None = None

    @property
    def finished(self) -> bool:
        return self.error is not None or self.index >= len(self.timesteps)


@dataclass
class LeffaState:
    rows: list[Row]
    trace: dict[str, torch.Tensor] | None = None  # intermediates of row 0 by golden name (tests)

    def record(self, name: str, value: torch.Tensor) -> None:
        if self.trace is not None:
            self.trace[name] = value.detach().float().cpu().clone()


class LeffaPoseTransferPipeline(StepwisePipeline):
    endpoint_id = "fal-ai/leffa/pose-transfer"
    Input = LeffaPoseTransferInput
    Output = LeffaPoseTransferOutput
    max_batch: ClassVar[int] = 4
    gpu_dtype: ClassVar[Dtype] = "float16"  # as the original runs
    weights_manifest: ClassVar[str | None] = "leffa"
    max_wait_ms: ClassVar[int] = 50

    def __init__(self, networks: LeffaNetworks, densepose: DensePose, safety: SafetyChecker,
                 ref_acceleration: bool = False) -> None:  # fmt: skip
        self.networks = networks
        self.densepose = densepose
        self.safety = safety
        self.ref_acceleration = ref_acceleration
        self.ddpm = DDPM()
        self._masked_posterior: tuple[torch.Tensor, torch.Tensor] | None = None
        self._vae_fp32: torch.nn.Module | None = None

    @classmethod
    def load(cls, source: WeightSource, device: str = "cpu", dtype: Dtype = "float32",
             ref_acceleration: bool | None = None) -> LeffaPoseTransferPipeline:  # fmt: skip
        configure_precision(device, dtype)
        networks = load_networks(source, device, torch_dtype(dtype))
        densepose = DensePose.load(source, device, dtype)
        safety = SafetyChecker.load(source, networks.config, device, torch_dtype(dtype))
        if ref_acceleration is None:
            ref_acceleration = os.environ.get(REF_ACCELERATION_ENV, "").strip() == "1"
        return cls(networks, densepose, safety, ref_acceleration)

    def batch_key(self, inp: BaseModel) -> Hashable:
        assert isinstance(inp, LeffaPoseTransferInput)
        return inp.num_inference_steps  # every request runs at the canvas size: only the step count differs

    def total_steps(self, inp: BaseModel) -> int:
        assert isinstance(inp, LeffaPoseTransferInput)
        return inp.num_inference_steps

    # ---------------------------------------------------------------- 1. prepare (CPU thread)

    def prepare(self, inp: BaseModel, load_image: ImageLoader) -> Prepared:
        prepared = super().prepare(inp, load_image)
        cfg = self.networks.config
        images = prepared.images
        prepared.extra["pose"] = letterbox(images.pop("pose_image_url"), cfg.width, cfg.height)
        prepared.extra["person"] = letterbox(images.pop("person_image_url"), cfg.width, cfg.height)
        return prepared

    # ---------------------------------------------------------------- 2. begin (device)

    @torch.inference_mode()
    def begin(self, items: list[Prepared], ctx: RunContext) -> LeffaState:
        seeds = [ctx.seed(p.key) for p in items]
        return self.start(items, seeds, seeds)

    @torch.inference_mode()
    def start(self, items: list[Prepared], init_seeds: list[int], step_seeds: list[int],
              trace: dict[str, torch.Tensor] | None = None) -> LeffaState:  # fmt: skip
        """``begin`` with explicit seeds: ``init_seeds`` for the VAE posteriors and the initial noise (the original's
        global RNG), ``step_seeds`` for the DDPM noise (its seeded generator)."""
        nets, device = self.networks, self.networks.device
        state = LeffaState([], trace)
        iuvs = self.densepose.leffa_iuv([p.extra["pose"] for p in items])
        rows = [Row(p.key, p.input, seed) for p, seed in zip(items, init_seeds, strict=True)]  # type: ignore[arg-type]
        for row, iuv in zip(rows, iuvs, strict=True):
            if iuv is None:
                row.error = ItemError.invalid_input(["pose_image_url"], NO_PERSON_MESSAGE, "person_not_detected")
        ok = [i for i, row in enumerate(rows) if row.error is None]
        if ok:
            h, w = nets.config.latent_hw
            sf = nets.vae.config.scaling_factor
            person = to_unit_range([items[i].extra["person"] for i in ok]).to(device, nets.dtype)
            ref_mean, ref_std = self._encode(person)
            masked_mean, masked_std = self._masked_image_posterior()
            state.record("vae.masked.mean", masked_mean)
            state.record("vae.ref.mean", ref_mean[:1])
            for j, i in enumerate(ok):
                row = rows[i]
                # the original's global-RNG draws, in its order: masked posterior, person posterior, initial noise
                gen = torch.Generator(device).manual_seed(init_seeds[i])
                eps_masked, eps_ref, noise = (torch.randn((1, 4, h, w), generator=gen, device=device) for _ in range(3))
                masked_latent = (masked_mean + masked_std * eps_masked) * sf
                row.ref_latent = (ref_mean[j : j + 1] + ref_std[j : j + 1] * eps_ref) * sf
                row.latents = noise  # init_noise_sigma = 1
                pose = F.interpolate(leffa_condition(iuvs[i]).to(device), (h, w), mode="nearest")  # type: ignore[arg-type]
                mask = torch.ones((1, 1, h, w), device=device)
                row.condition = torch.cat([mask, masked_latent, pose], dim=1)
                row.step_generator = torch.Generator(device).manual_seed(step_seeds[i])
                row.timesteps = self.ddpm.timesteps(row.input.num_inference_steps)
                if j == 0:
                    state.record("lat.masked_image_latent", masked_latent)
                    state.record("lat.ref_image_latent", row.ref_latent)
                    state.record("lat.densepose_latent", pose)
                    state.record("noise.init", row.latents)
            if self.ref_acceleration:
                self._accelerated_features([rows[i] for i in ok], state)
        state.rows = rows
        return state

    def _masked_image_posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked pose image is all zeros (grey) for every request: its posterior is encoded once."""
        if self._masked_posterior is None:
            nets = self.networks
            zeros = torch.zeros((1, 3, nets.config.height, nets.config.width), device=nets.device, dtype=nets.dtype)
            self._masked_posterior = self._encode(zeros)
        return self._masked_posterior

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) in float32; redone in float32 when the half-precision encode overflows."""
        dist = self.networks.vae.encode(images).latent_dist
        if not (torch.isfinite(dist.mean).all() and torch.isfinite(dist.std).all()):
            log.warning("VAE encode in %s overflowed; encoding again in float32", images.dtype)
            dist = self._float32_vae().encode(images.float()).latent_dist
        return dist.mean.float(), dist.std.float()

    def _float32_vae(self) -> torch.nn.Module:
        vae = self.networks.vae
        if vae.dtype == torch.float32:
            return vae
        if self._vae_fp32 is None:
            self._vae_fp32 = copy.deepcopy(vae).float()
        return self._vae_fp32

    def _accelerated_features(self, rows: list[Row], state: LeffaState) -> None:
        """``ref_acceleration``: each row's reference features, once, at its ``timesteps[n // 2]``."""
        t = [row.timesteps[len(row.timesteps) // 2] for row in rows]
        features = self._reference_features(rows, t)
        for j, row in enumerate(rows):
            row.ref_features = {b: f[2 * j : 2 * j + 2].clone() for b, f in features.items()}  # own storage
        if state.trace is not None:
            state.record("acc.ref_t", torch.tensor(t[0]))
            for n, block in enumerate(self.networks.blocks):
                state.record(f"acc.ref_feats.{n:02d}", rows[0].ref_features[block])  # type: ignore[index]

    def _reference_features(self, rows: list[Row], t: list[int]) -> Features:
        """Reference features ``[uncond, cond]`` per row, interleaved as the generative UNet's batch.

        CFG's uncond branch runs the reference UNet on a zero latent, so its features depend on t alone: they are
        computed once per distinct timestep of the batch, followed by one row per person latent."""
        nets = self.networks
        distinct = sorted(set(t))
        ref = torch.cat([row.ref_latent for row in rows])  # type: ignore[misc]
        zeros = torch.zeros((len(distinct), *ref.shape[1:]), device=ref.device)
        ref_in = torch.cat([zeros, ref]).to(nets.dtype)
        timesteps = torch.tensor(distinct + t, device=nets.device)
        nets.features.clear()
        with contextlib.suppress(FeaturesComplete):  # the rest of the reference UNet's output is never used
            nets.reference_unet(ref_in, timesteps, encoder_hidden_states=None)
        order = [i for j, tj in enumerate(t) for i in (distinct.index(tj), len(distinct) + j)]
        index = torch.tensor(order, device=nets.device)
        features = {block: f.index_select(0, index) for block, f in nets.features.items()}
        nets.features.clear()
        return features

    # ---------------------------------------------------------------- 3. step (device)

    @torch.inference_mode()
    def step(self, state: LeffaState, ctx: RunContext) -> None:
        nets, device = self.networks, self.networks.device
        rows = [row for row in state.rows if not row.finished]
        if not rows:
            return
        t = [row.timesteps[row.index] for row in rows]
        latents = torch.cat([row.latents for row in rows])  # type: ignore[misc]
        condition = torch.cat([row.condition for row in rows])  # type: ignore[misc]

        if self.ref_acceleration:
            features = {b: torch.cat([row.ref_features[b] for row in rows]) for b in nets.blocks}  # type: ignore[index]
        else:
            features = self._reference_features(rows, t)
            if state.trace is not None and rows[0] is state.rows[0]:
                self._trace_features(state, features, rows[0].index)

        # [uncond, cond] per row; both branches see the same latent and condition, the reference differs
        unet_in = torch.cat([latents, condition], dim=1).repeat_interleave(2, dim=0)
        timesteps = torch.tensor(t, device=device).repeat_interleave(2)
        nets.features.update(features)
        try:
            eps = nets.unet(unet_in.to(nets.dtype), timesteps, encoder_hidden_states=None).sample.float()
        finally:
            nets.features.clear()
        eps_uncond, eps_cond = eps[0::2], eps[1::2]
        scale = torch.tensor([row.input.guidance_scale for row in rows], device=device)
        eps_cfg, eps_final = guide(eps_uncond, eps_cond, scale)

        noise = torch.cat([
            torch.randn(latents[:1].shape, generator=row.step_generator, device=device) for row in rows
        ])  # fmt: skip
        prev_t = [self.ddpm.previous(ti, len(row.timesteps)) for ti, row in zip(t, rows, strict=True)]
        new_latents, pred_original = self.ddpm.step(eps_final, t, prev_t, latents, noise)

        if state.trace is not None and rows[0] is state.rows[0]:
            prefix = f"{'acc.' if self.ref_acceleration else ''}step{rows[0].index}"
            for name, value in [("t", torch.tensor(t[0])), ("latents_in", latents), ("unet_in", unet_in[:2]),
                                ("eps_uncond", eps_uncond), ("eps_cond", eps_cond), ("eps_cfg", eps_cfg),
                                ("eps_final", eps_final), ("ddpm_variance_noise", noise),
                                ("pred_original_sample", pred_original), ("latents_out", new_latents)]:  # fmt: skip
                state.record(f"{prefix}.{name}", value[:1] if value.ndim and name != "unet_in" else value)
        for j, row in enumerate(rows):
            row.latents = new_latents[j : j + 1]
            row.index += 1
            ctx.progress(row.index, len(row.timesteps), item=row.key)

    def _trace_features(self, state: LeffaState, features: Features, index: int) -> None:
        for n, block in enumerate(self.networks.blocks):
            if index == 0 or n == 0:
                state.record(f"ref_feats.step{index}.{n:02d}", features[block][:2])

    # ---------------------------------------------------------------- the running batch

    def done(self, state: LeffaState) -> list[int]:
        return [row.key for row in state.rows if row.finished]

    def keys(self, state: LeffaState) -> list[int]:
        return [row.key for row in state.rows]

    def merge(self, state: LeffaState, other: LeffaState) -> LeffaState:
        state.rows.extend(other.rows)
        return state

    def drop(self, state: LeffaState, keys: list[int]) -> None:
        state.rows = [row for row in state.rows if row.key not in set(keys)]

    # ---------------------------------------------------------------- 4. finish (device, then CPU pool)

    @torch.inference_mode()
    def finish(self, state: LeffaState, keys: list[int], ctx: RunContext) -> list[Result]:
        by_key = {row.key: row for row in state.rows}
        rows = [by_key[k] for k in keys]
        self.drop(state, keys)
        good = [row for row in rows if row.error is None]
        images: dict[int, np.ndarray] = {}
        flags: dict[int, bool] = {}
        if good:
            latents = torch.cat([row.latents for row in good])  # type: ignore[misc]
            state.record("final.latents", latents[:1])
            decoded = self._decode(latents, ctx, [row.key for row in good], state)
            finite = torch.isfinite(decoded.flatten(1)).all(dim=1).tolist()
            for row, ok in zip(good, finite, strict=True):
                if not ok:  # NaN latents (a half-precision overflow in the UNets): fail, never a black image
                    row.error = ItemError(
                        500, "the denoising overflowed (NaN); retry in float32", "internal_server_error"
                    )
            pixels = to_uint8(decoded.nan_to_num())
            state.record("out.image_u8", torch.from_numpy(pixels[:1]))
            checked = [j for j, row in enumerate(good) if row.input.enable_safety_checker and row.error is None]
            nsfw = self.safety.check([pixels[j] for j in checked])
            for j, row in enumerate(good):
                images[row.key], flags[row.key] = pixels[j], False  # rows failed just now are answered by save
            for j, flagged in zip(checked, nsfw, strict=True):
                if flagged:  # documented choice: a black image, as diffusers' pipelines return
                    images[good[j].key] = np.zeros_like(pixels[j])
                    flags[good[j].key] = True

        def save(_: int, row: Row) -> Result:
            if row.error is not None:
                return row.error
            saved = ctx.save_image(row.key, images[row.key], row.input.output_format)
            return LeffaPoseTransferOutput(image=Image(**saved), seed=row.seed, has_nsfw_concepts=flags[row.key])

        return finish_all(rows, save, "encode")

    def _decode(self, latents: torch.Tensor, ctx: RunContext, keys: list[int], state: LeffaState) -> torch.Tensor:
        """``latents / scaling_factor`` -> VAE decode. The SDXL VAE can overflow in float16 (NaN/inf, a black
        image): such a decode is redone in float32."""
        vae = self.networks.vae
        z = latents / vae.config.scaling_factor
        state.record("dec.latents_in", z[:1])
        decoded = vae.decode(z.to(vae.dtype)).sample
        if not torch.isfinite(decoded).all() and vae.dtype != torch.float32:
            log.warning("VAE decode in %s overflowed; decoding again in float32", vae.dtype)
            for key in keys:
                ctx.log(f"VAE decode in {vae.dtype} overflowed; decoded again in float32", item=key, level="WARNING")
            decoded = self._float32_vae().decode(z.float()).sample
        decoded = decoded.float()
        state.record("dec.sample", decoded[:1])
        return decoded

    # ---------------------------------------------------------------- memory budget (ARCHITECTURE.md §4.2)

    def resident_bytes(self) -> int:
        modules = [*self.networks.modules().values(), self.densepose.model, self.safety.model]
        return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])

    def row_bytes(self, inp: BaseModel) -> int:
        """Estimate for one request: its reference features ([uncond, cond], held across the step with
        ref_acceleration), about three times that in transient UNet activations, and the VAE decode's widest
        activations (128 channels at full resolution, a few alive at once)."""
        cfg, nets = self.networks.config, self.networks
        item = nets.dtype.itemsize
        h, w = cfg.latent_hw
        feature_elems = 0
        for block in nets.blocks:
            attn = nets.reference_unet.get_submodule(block).attn1
            level = 2 if block.startswith(("down_blocks.1", "up_blocks.1")) else 4
            feature_elems += (h // level) * (w // level) * attn.to_q.in_features
        decode = 4 * cfg.height * cfg.width * nets.vae.config.block_out_channels[0] * item
        return 2 * feature_elems * item * 4 + decode
