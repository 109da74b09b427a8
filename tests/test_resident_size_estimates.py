"""The diffusion pipelines declare their device memory before loading (ARCHITECTURE.md §4.2), from the weight
manifests: these tests hold the manifests' parameter counts to the real-shaped networks (built on the meta
device, the way ``load`` builds them) and check the dtype rule of the estimate."""

from __future__ import annotations

import pytest
import torch

import weights
from pipelines.catvton.configs import REAL_UNET, REAL_VAE
from pipelines.catvton.networks import build_unet, build_vae
from pipelines.catvton.pipeline import CatVTONPipeline
from pipelines.contract import WeightSource
from pipelines.leffa import networks as leffa_networks
from pipelines.leffa.pipeline import LeffaPoseTransferPipeline
from pipelines.pulid import sdxl
from pipelines.pulid.pipeline import PuLIDPipeline


def params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def manifest_params(pipeline: str, key: str) -> int:
    (f,) = [f for f in weights.manifest(pipeline) if f.key == key]
    assert f.params is not None
    return f.params


@pytest.fixture(autouse=True)
def shipped_manifests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAL_ONPREM_MANIFEST_DIR", raising=False)


def test_catvton_manifest_counts_the_real_unet_and_vae() -> None:
    assert params(build_unet(REAL_UNET, "meta")) == manifest_params("catvton", "unet")
    assert params(build_vae(REAL_VAE, "meta")) == manifest_params("catvton", "vae")


def test_leffa_manifest_counts_the_real_vae_and_both_unets() -> None:
    modules = leffa_networks.build_meta(leffa_networks.config_for(WeightSource.random_full()))
    assert params(*modules.values()) == manifest_params("leffa", "pose_transfer")


def test_pulid_manifest_counts_the_real_sdxl_unet() -> None:
    assert params(sdxl.build_unet(sdxl.REAL.unet, "meta")) == manifest_params("pulid", "unet")


@pytest.mark.parametrize("cls", [CatVTONPipeline, LeffaPoseTransferPipeline, PuLIDPipeline], ids=lambda c: c.__name__)
def test_declared_size_is_the_real_weights_at_the_loaded_dtype(cls: type) -> None:
    half = cls.expected_resident_bytes(WeightSource.random_full(), cls.gpu_dtype)
    assert half == cls.expected_resident_bytes(WeightSource.real(), cls.gpu_dtype) > 2 * 10**9
    # 16-bit weights double in float32; the float32 parts (VAE, ID encoders, DensePose, SCHP) stay as they are
    sixteen_bit = sum(f.params or 0 for f in weights.manifest(cls.weights_manifest) if f.dtype in ("fp16", "bf16"))
    assert cls.expected_resident_bytes(WeightSource.real(), "float32") == half + 2 * sixteen_bit
    assert cls.expected_resident_bytes(WeightSource.tiny(), cls.gpu_dtype) == 0  # measured after loading
