"""Every network PuLID runs, for a ``WeightSource``:

- tiny: the reference fixtures' tiny SDXL configs, a 21-block width-64 EVA, IDEncoder(ctx 64, vit 64), and
  seeded stand-ins for the face models (SCRFD / ArcFace ONNX graphs, SCRFD points in place of RetinaFace, a
  one-conv parser in place of BiSeNet);
- random_full: the real configs with seeded random weights (benchmarks), BiSeNet at full size, the ONNX and
  RetinaFace stand-ins (a random RetinaFace never passes its 0.97 threshold);
- real: the manifest's files (``weights.locate``), every state dict loaded strictly.

Dtypes as the original runs them: UNet and text encoders in ``dtype`` (float16 on a GPU is the original's),
VAE, EVA, IDEncoder and the ID projections float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import weights
from pipelines.common.tensors import configure_precision, torch_dtype
from pipelines.contract import WeightSource

from . import eva as eva_mod
from . import sdxl, tiny_onnx
from .adapter import PuLIDAdapter, build_adapter
from .face_nets import BiSeNet
from .faces import ReferenceFaces, RetinaFaceLandmarker, TinyParser, bisenet

PIPELINE = "pulid"
TINY_VIT_WIDTH = 64


@dataclass
class PuLIDNetworks:
    sdxl: sdxl.SDXLNetworks
    adapter: PuLIDAdapter
    eva: nn.Module
    parser: nn.Module
    faces: ReferenceFaces
    device: torch.device
    dtype: torch.dtype  # UNet / text encoders

    def torch_modules(self) -> list[nn.Module]:
        s = self.sdxl
        return [s.unet, s.vae, s.text_encoder, s.text_encoder_2, self.eva, self.parser, self.adapter]


def _read(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if str(path).endswith(".safetensors"):
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@torch.no_grad()
def strong_identity_(adapter: PuLIDAdapter) -> PuLIDAdapter:
    """Random ID projections with std 4/sqrt(fan_in): with default init the identity term of random networks
    is too weak to change a pixel, and tiny end-to-end tests must see mode, references and id_mix act."""
    for name, param in adapter.named_parameters():
        if ".id_to_" in name:
            param.copy_(torch.randn_like(param) * 4 / param.shape[1] ** 0.5)
    return adapter


def load_networks(source: WeightSource, device: str = "cpu", dtype: str = "float32") -> PuLIDNetworks:
    configure_precision(device, dtype)
    if source.kind in ("tiny", "random_full"):
        tiny = source.kind == "tiny"
        nets = sdxl.build_sdxl(sdxl.TINY if tiny else sdxl.REAL, source.seed, torch_dtype(dtype))
        eva = _seeded(source.seed + 1, lambda: eva_mod.build_eva(eva_mod.TINY if tiny else eva_mod.REAL))
        vit_width = TINY_VIT_WIDTH if tiny else eva_mod.REAL["embed_dim"]
        adapter = _seeded(source.seed + 2, lambda: strong_identity_(build_adapter(nets.unet, vit_width)))
        parser: nn.Module = TinyParser(source.seed) if tiny else _seeded(source.seed + 3, BiSeNet)
        faces = ReferenceFaces.from_bytes(
            tiny_onnx.scrfd_standin(source.seed), tiny_onnx.arcface_standin(source.seed), device
        )
    elif source.kind == "real":
        root = source.weights_dir

        def locate(key: str):
            return weights.locate(PIPELINE, key, root)

        nets = sdxl.load_sdxl(root)
        eva = eva_mod.load_eva_state(eva_mod.build_eva(eva_mod.REAL), _read(locate("eva_clip")))
        adapter = build_adapter(nets.unet, eva_mod.REAL["embed_dim"], "meta")
        adapter.load_state_dict(_read(locate("pulid")), strict=True, assign=True)
        parser = bisenet(_read(locate("facexlib_bisenet")))
        landmarker = RetinaFaceLandmarker.from_state(_read(locate("facexlib_retinaface")), device)
        faces = ReferenceFaces(locate("antelopev2_detector"), locate("antelopev2_arcface"), landmarker, device)
    else:
        raise ValueError(f"unknown weight source kind {source.kind!r}")
    return place(nets, adapter, eva, parser, faces, torch.device(device), torch_dtype(dtype))


def _move(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    module.to(device)
    if next(module.parameters()).dtype != dtype:  # diffusers warns on every dtype cast, even a no-op one
        module.to(dtype)


def place(
    nets: sdxl.SDXLNetworks,
    adapter: PuLIDAdapter,
    eva: nn.Module,
    parser: nn.Module,
    faces: ReferenceFaces,
    device: torch.device,
    dtype: torch.dtype,
) -> PuLIDNetworks:
    """Move to the device in the original's dtypes, then attach the ID processors (which stay float32)."""
    for module in (nets.unet, nets.text_encoder, nets.text_encoder_2):
        _move(module, device, dtype)
    for module in (nets.vae, eva, adapter, parser):
        _move(module, device, torch.float32)
    for module in (nets.unet, nets.vae, nets.text_encoder, nets.text_encoder_2, eva, adapter, parser):
        module.eval().requires_grad_(False)
    adapter.install(nets.unet)
    return PuLIDNetworks(nets, adapter, eva, parser, faces, device, dtype)
