"""Leffa's networks: SDXL VAE, reference UNet, generative UNet (stock diffusers modules), built on the meta
device and strictly loaded from one of three sources:

- ``real``: ``pose_transfer.pth`` converted once into ``{vae,unet_encoder,unet}.safetensors`` (convert.py);
- ``tiny`` / ``random_full``: the tiny or real config with seeded random weights (every tensor random, also
  the ``conv_in`` channels Leffa zero-initialises), made directly on the target device.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from pipelines.contract import WeightSource

from . import attention
from .configs import GENERATIVE_IN_CHANNELS, PREFIXES, REAL, REFERENCE_IN_CHANNELS, TINY, LeffaConfig

PIPELINE = "leffa"  # weights/manifests/leffa.json
CHECKPOINT_KEY = "pose_transfer"


@dataclass
class LeffaNetworks:
    config: LeffaConfig
    vae: AutoencoderKL
    reference_unet: UNet2DConditionModel
    unet: UNet2DConditionModel
    features: attention.Features  # filled by the reference UNet's processors, read by the generative UNet's
    blocks: list[str]  # reference-feature block paths in forward order

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae, "unet_encoder": self.reference_unet, "unet": self.unet}


def config_for(source: WeightSource) -> LeffaConfig:
    return TINY if source.kind == "tiny" else REAL


def build_meta(config: LeffaConfig) -> dict[str, torch.nn.Module]:
    """The three modules on the meta device, by checkpoint prefix (their state dicts are the checkpoint's)."""
    with torch.device("meta"):
        return {
            "vae": AutoencoderKL.from_config(config.vae),
            "unet_encoder": UNet2DConditionModel.from_config({**config.unet, "in_channels": REFERENCE_IN_CHANNELS}),
            "unet": UNet2DConditionModel.from_config({**config.unet, "in_channels": GENERATIVE_IN_CHANNELS}),
        }


def random_tensor(tag: str, key: str, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """Seeded random weights: norm scales near 1, small biases, fan-in-scaled matrices (finite activations)."""
    gen = torch.Generator(device).manual_seed(zlib.crc32(f"{tag}:{key}".encode()))
    if len(shape) == 1 and key.endswith("weight"):
        return torch.rand(shape, generator=gen, device=device) + 0.5
    if len(shape) == 1:
        return torch.randn(shape, generator=gen, device=device) * 0.1
    return torch.randn(shape, generator=gen, device=device) * math.sqrt(1.0 / math.prod(shape[1:]))


def random_state_dict(
    module: torch.nn.Module, tag: str, device: torch.device | str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    return {k: random_tensor(tag, k, tuple(v.shape), device).to(dtype) for k, v in module.state_dict().items()}


def converted_dir(weights_dir: Path | str | None) -> Path:
    from weights import locate

    return locate(PIPELINE, CHECKPOINT_KEY, Path(weights_dir) if weights_dir else None)


def load_networks(source: WeightSource, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  checkpoint_dir: Path | None = None) -> LeffaNetworks:  # fmt: skip
    """Build and strictly load the networks. ``checkpoint_dir`` (folder of ``<prefix>.safetensors``) overrides
    the source's files; the golden tests pass the split tiny fixture checkpoint through it."""
    from safetensors.torch import load_file

    config = config_for(source)
    modules = build_meta(config)
    folder = checkpoint_dir or (converted_dir(source.weights_dir) if source.kind == "real" else None)
    for prefix in PREFIXES:
        module = modules[prefix]
        if folder is not None:
            state = {k: v.to(dtype) for k, v in load_file(str(folder / f"{prefix}.safetensors"), str(device)).items()}
        else:
            state = random_state_dict(module, f"leffa-{source.kind}-{source.seed}:{prefix}", device, dtype)
        module.load_state_dict(state, strict=True, assign=True)
        module.eval().requires_grad_(False)  # assign=True: already on device, in dtype
        assert not any(t.is_meta for t in [*module.parameters(), *module.buffers()])
    vae, reference_unet, unet = modules["vae"], modules["unet_encoder"], modules["unet"]
    for u in (reference_unet, unet):
        u.register_to_config(addition_embed_type=None)  # Leffa: the text_time add-embedding stays unused
    features: attention.Features = {}
    blocks = attention.install_reference(reference_unet, features)
    attention.install_generative(unet, features)
    return LeffaNetworks(config, vae, reference_unet, unet, features, blocks)  # type: ignore[arg-type]
