"""Conversions to safetensors: the generic torch converter, Leffa's split-by-prefix fp16, the registry."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from weights.convert import converter, run_conversion


def test_torch_checkpoint_to_safetensors_keeps_values_and_unwraps(tmp_path):
    g = torch.Generator().manual_seed(1)
    shared = torch.randn(4, 4, generator=g)
    sd = {
        "a.weight": shared,
        "b.weight": shared,  # shares storage with a.weight
        "view": shared[1:, ::2],  # non-contiguous
        "c": torch.arange(5),
        "half": torch.randn(3).half(),
        "bf": torch.randn(2, generator=g).bfloat16(),
        "flag": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    src = tmp_path / "m.pth"
    torch.save({"state_dict": sd, "optimizer": {"lr": 0.1}, "epoch": 3}, src)

    dst = run_conversion("torch_to_safetensors", src, tmp_path / "m.safetensors")

    out = load_file(dst)
    assert set(out) == set(sd)
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape and torch.equal(out[k], v), k
    assert not (tmp_path / "m.safetensors.tmp").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickles_that_run_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    src = tmp_path / "evil.pth"
    src.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(pickle.UnpicklingError):
        run_conversion("torch_to_safetensors", src, tmp_path / "evil.safetensors")
    assert not (tmp_path / "evil.safetensors").exists()


def test_split_fp16_by_prefix_like_leffa(tmp_path):
    g = torch.Generator().manual_seed(2)
    sd = {
        "vae.encoder.conv_in.weight": torch.randn(8, 3, 3, 3, generator=g),
        "unet.conv_in.weight": torch.randn(8, 12, 3, 3, generator=g),
        "unet.time_embedding.linear_1.bias": torch.randn(8, generator=g),
        "unet_encoder.conv_in.weight": torch.randn(8, 4, 3, 3, generator=g),
        "unet_encoder.position_ids": torch.arange(4),
    }
    src = tmp_path / "pose_transfer.pth"
    torch.save(sd, src)
    assert converter("split_fp16").output == "dir"

    out = run_conversion("split_fp16", src, tmp_path / "pose_transfer")

    assert sorted(p.name for p in out.iterdir()) == ["unet.safetensors", "unet_encoder.safetensors", "vae.safetensors"]
    unet = load_file(out / "unet.safetensors")
    assert set(unet) == {"conv_in.weight", "time_embedding.linear_1.bias"}
    assert unet["conv_in.weight"].dtype == torch.float16
    assert torch.equal(unet["conv_in.weight"], sd["unet.conv_in.weight"].half())
    enc = load_file(out / "unet_encoder.safetensors")
    assert enc["conv_in.weight"].shape == (8, 4, 3, 3)
    assert enc["position_ids"].dtype == torch.int64  # integers are not cast
    with safe_open(str(out / "vae.safetensors"), framework="pt") as fh:
        assert list(fh.keys()) == ["encoder.conv_in.weight"]


def test_converters_by_name_and_module_path(tmp_path):
    with pytest.raises(LookupError, match="unknown conversion"):
        converter("nope")
    with pytest.raises(LookupError, match="cannot import"):
        converter("not_a_module_xyz:fn").function()
    fn = converter("tests.test_weights_convert:_copy_converter").function()
    assert fn is _copy_converter
    src = tmp_path / "x"
    src.write_bytes(b"1")
    assert run_conversion("tests.test_weights_convert:_copy_converter", src, tmp_path / "y").read_bytes() == b"1"


def _copy_converter(src, dst):
    dst.write_bytes(src.read_bytes())
