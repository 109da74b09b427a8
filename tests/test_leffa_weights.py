"""Leffa's weights: the full-size networks match the real checkpoint's manifest key for key and shape for shape
(meta device, no memory), the fixture checkpoint loads strictly, and ``weights convert leffa`` turns a
synthetic fp32 ``.pth`` in the real key order into per-module fp16 safetensors, atomically, refusing any other
layout."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file

from pipelines.contract import WeightSource
from pipelines.leffa.configs import TINY
from pipelines.leffa.convert import convert, expected_layout
from pipelines.leffa.networks import load_networks
from tests.support.leffa import FIXTURES
from weights.convert import converter, run_conversion


def test_full_size_networks_match_the_checkpoint_manifest(reference_dir):
    manifest = json.loads((reference_dir / "leffa/leffa_pose_transfer.manifest.json").read_text())["state_dict"]
    ours = expected_layout()
    assert {k: list(s) for k, s in ours.items()} == manifest
    assert len(ours) == 3608 and sum(torch.Size(s).numel() for s in ours.values()) == 5_218_604_271


def synthetic_pth(reference_dir, path) -> dict[str, torch.Tensor]:
    """The fixture's tiny tensors in the real file's key order, as LeffaModel's torch.save writes them."""
    tensors = load_file(str(reference_dir / FIXTURES / "models/pose_transfer_tiny.safetensors"))
    order = json.loads((reference_dir / FIXTURES / "models/checkpoint_key_order.json").read_text())
    keys = order["keys"] if isinstance(order, dict) else order
    torch.save(OrderedDict((k, tensors[k]) for k in keys), path)
    return tensors


def tiny_convert(src, dst) -> None:
    """``weights convert leffa`` with the tiny layout standing for the real one."""
    convert(src, dst, TINY)


TINY_CONVERTER = "tests.test_leffa_weights:tiny_convert"


def test_convert_synthetic_pth_then_strict_load(reference_dir, tmp_path):
    tensors = synthetic_pth(reference_dir, tmp_path / "pose_transfer.pth")
    assert converter("leffa").output == "dir" and converter("leffa").function() is convert
    out = run_conversion(TINY_CONVERTER, tmp_path / "pose_transfer.pth", tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == ["unet.safetensors", "unet_encoder.safetensors", "vae.safetensors"]
    unet = load_file(str(out / "unet.safetensors"))
    assert unet["conv_in.weight"].dtype == torch.float16 and unet["conv_in.weight"].shape == (16, 12, 3, 3)
    assert torch.equal(unet["conv_in.weight"], tensors["unet.conv_in.weight"].half())
    networks = load_networks(WeightSource.tiny(), checkpoint_dir=out)  # strict, every key used
    assert torch.equal(networks.reference_unet.conv_in.weight, tensors["unet_encoder.conv_in.weight"].half().float())


def test_convert_refuses_another_layout_and_writes_nothing(reference_dir, tmp_path):
    tensors = synthetic_pth(reference_dir, tmp_path / "x.pth")
    broken = dict(tensors)
    del broken["unet.conv_out.bias"]
    broken["unet.conv_in.weight"] = torch.zeros(16, 9, 3, 3)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"1 missing .*unet.conv_out.bias.*another shape"):
        run_conversion(TINY_CONVERTER, tmp_path / "broken.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
    # the real layout is the default: the tiny file is refused by it
    with pytest.raises(ValueError, match="not Leffa's pose-transfer checkpoint"):
        run_conversion("leffa", tmp_path / "x.pth", tmp_path / "out")
