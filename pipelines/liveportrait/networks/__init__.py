"""The five LivePortrait networks (F, M, W, G, S), built from configs and loaded from checkpoints.

For the cropping helper: ``weights/manifests/liveportrait.json`` lists, besides the five network
files, the ONNX files of the cropper under the keys ``det_10g`` (insightface buffalo_l SCRFD),
``2d106det`` (106-point landmarks) and ``landmark_203`` (LivePortrait's 203-point ``landmark.onnx``);
get them with ``weights.locate("liveportrait", key, source.weights_dir)``.

Public API::

    nets = load_networks(WeightSource.tiny(), device="cpu", dtype="float32")
    f_s = nets.appearance(img)                       # [B,3,256,256] in [0,1] -> [B,C,D,64,64]
    raw = nets.motion(img)                           # dict kp/exp [B,63], pitch/yaw/roll [B,66], t, scale
    deg = bins_to_degrees(raw["pitch"])              # [B] degrees (float32)
    w = nets.warping(f_s, kp_driving=x_d, kp_source=x_s)  # dict out [B,256,64,64], deformation, occlusion_map
    img = nets.spade(w["out"])                       # [B,3,512,512] in [0,1]
    d = nets.stitching.stitching(torch.cat([x_s, x_d], 1).flatten(1))  # [B,65]; .lip [B,63]; .eye [B,63]

Every network takes a batch axis; items of a batch do not interact (eval-mode BatchNorm, per-sample
InstanceNorm). Networks accept any float input and return float32. Weights are float32;
``nets.dtype`` is the autocast dtype of F, W and G (float16/bfloat16 on CUDA when asked, else
float32); M and S always run float32. Measured errors: see ``precision.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import weights
from pipelines.common.tensors import configure_precision
from pipelines.contract import WeightSource

from .appearance import AppearanceFeatureExtractor
from .blocks import Network
from .configs import FIXTURES, REAL, TINY, NetworksConfig
from .motion import GRN, ChannelsFirstLayerNorm, MotionExtractor, bins_to_degrees
from .precision import autocast_dtypes, resolve_dtype
from .spade import SPADEDecoder, SpectralNormConv2d
from .state_dict import normalize_state_dict
from .stitching import StitchingRetargeting
from .warping import WarpingNetwork

__all__ = [
    "FIXTURES",
    "NETWORK_FILES",
    "REAL",
    "TINY",
    "LivePortraitNetworks",
    "NetworksConfig",
    "bins_to_degrees",
    "build_network",
    "build_networks",
    "load_checkpoint",
    "load_network",
    "load_networks",
    "randomize_",
]

PIPELINE = "liveportrait"

# dataclass field -> (manifest key, module class, config attribute)
NETWORK_FILES: dict[str, tuple[str, type[nn.Module], str]] = {
    "appearance": ("appearance_feature_extractor", AppearanceFeatureExtractor, "appearance"),
    "motion": ("motion_extractor", MotionExtractor, "motion"),
    "warping": ("warping_module", WarpingNetwork, "warping"),
    "spade": ("spade_generator", SPADEDecoder, "spade"),
    "stitching": ("stitching_retargeting_module", StitchingRetargeting, "stitching"),
}


@dataclass
class LivePortraitNetworks:
    appearance: AppearanceFeatureExtractor
    motion: MotionExtractor
    warping: WarpingNetwork
    spade: SPADEDecoder
    stitching: StitchingRetargeting
    config: NetworksConfig
    device: torch.device
    dtype: torch.dtype

    def modules(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in NETWORK_FILES}


def build_network(name: str, config: NetworksConfig, device: str | torch.device = "cpu") -> nn.Module:
    """One network (``appearance`` ... ``stitching``), default init; on ``meta`` it allocates nothing."""
    _, cls, attr = NETWORK_FILES[name]
    with torch.device(device):
        return cls(getattr(config, attr))


@torch.no_grad()
def randomize_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give normalisation layers non-trivial values, as the reference fixtures do.

    Default init makes BatchNorm / LayerNorm / GRN identities, which would leave whole code paths
    untested in tiny and random_full models.
    """

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=generator) * (hi - lo) + lo)

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            uniform(m.weight, 0.75, 1.25)
            uniform(m.bias, -0.1, 0.1)
            uniform(m.running_mean, -0.1, 0.1)
            uniform(m.running_var, 0.5, 1.5)
        elif isinstance(m, nn.LayerNorm | ChannelsFirstLayerNorm):
            uniform(m.weight, 0.75, 1.25)
            uniform(m.bias, -0.1, 0.1)
        elif isinstance(m, GRN):
            uniform(m.gamma, -0.5, 0.5)
            uniform(m.beta, -0.1, 0.1)
        elif isinstance(m, SpectralNormConv2d):
            m.power_iteration_(20, generator)
    return module


def build_networks(
    config: NetworksConfig,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
) -> LivePortraitNetworks:
    """All five networks at ``config`` with seeded random weights (tiny / random_full)."""
    config.check()
    modules = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed + 1000)
        for name in NETWORK_FILES:
            modules[name] = randomize_(build_network(name, config, "cpu"), gen)
    return _finish(modules, config, device, dtype)


def load_checkpoint(path: Path | str) -> dict[str, object]:
    """A ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors`` file, on CPU."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_network(name: str, config: NetworksConfig, checkpoint: dict[str, object]) -> nn.Module:
    """Build ``name`` without allocating and load the checkpoint with strict key and shape matching."""
    key = NETWORK_FILES[name][0]
    module = build_network(name, config, "meta")
    module.load_state_dict(normalize_state_dict(key, checkpoint), strict=True, assign=True)
    return module


def load_networks(
    source: WeightSource, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"
) -> LivePortraitNetworks:
    """The five networks in eval mode for a ``WeightSource`` (real / tiny / random_full).

    Real files come from ``weights.locate`` (the safetensors conversion of the ``.pth`` files, or the
    files themselves); raises ``weights.MissingWeights`` naming the command that fetches them.
    float32 on CUDA turns TF32 off (``configure_precision``).
    """
    configure_precision(device, dtype)
    if source.kind == "tiny":
        return build_networks(TINY, device, dtype, source.seed)
    if source.kind == "random_full":
        return build_networks(REAL, device, dtype, source.seed)
    if source.kind != "real":
        raise ValueError(f"unknown weight source kind {source.kind!r}")
    paths = {name: weights.locate(PIPELINE, key, source.weights_dir) for name, (key, _, _) in NETWORK_FILES.items()}
    modules = {name: load_network(name, REAL, load_checkpoint(path)) for name, path in paths.items()}
    return _finish(modules, REAL, device, dtype)


def _finish(
    modules: dict[str, nn.Module],
    config: NetworksConfig,
    device: str | torch.device,
    dtype: str | torch.dtype,
) -> LivePortraitNetworks:
    device = torch.device(device)
    autocast = autocast_dtypes(resolve_dtype(dtype), device)
    for name, module in modules.items():
        module.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        if isinstance(module, Network):
            module.autocast_dtype = autocast[name]
    compute = autocast["spade"] or torch.float32
    return LivePortraitNetworks(**modules, config=config, device=device, dtype=compute)
