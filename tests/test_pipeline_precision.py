"""float32 on CUDA means true float32: the TF32 switch of the torch pipelines (set without a GPU)."""

from __future__ import annotations

import pytest
import torch

from pipelines.common import tensors
from pipelines.common.tensors import ALLOW_TF32_ENV, configure_precision
from pipelines.contract import WeightSource


def tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def set_tf32(allow: bool) -> None:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow


@pytest.fixture(autouse=True)
def restore_flags(monkeypatch):
    monkeypatch.delenv(ALLOW_TF32_ENV, raising=False)
    cudnn, matmul = tf32_flags()
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_float32_on_cuda_turns_tf32_off(device):
    set_tf32(True)
    configure_precision(device, "float32")
    assert tf32_flags() == (False, False)


def test_env_opts_in_to_tf32(monkeypatch):
    set_tf32(False)
    monkeypatch.setenv(ALLOW_TF32_ENV, "1")
    configure_precision("cuda", torch.float32)
    assert tf32_flags() == (True, True)
    monkeypatch.setenv(ALLOW_TF32_ENV, "0")
    configure_precision("cuda", "float32")
    assert tf32_flags() == (False, False)


@pytest.mark.parametrize(("device", "dtype"), [("cpu", "float32"), ("cuda", "float16"), ("cuda:0", "bfloat16")])
def test_other_devices_and_half_dtypes_leave_the_flags(device, dtype):
    for allow in (True, False):
        set_tf32(allow)
        configure_precision(device, dtype)
        assert tf32_flags() == (allow, allow)


def test_torch_loaders_configure_precision(monkeypatch):
    """LivePortrait's networks, DensePose and the SCHP parser all set the flags for their device and dtype."""
    from pipelines.common.densepose import predictor
    from pipelines.common.parsing import parser
    from pipelines.liveportrait import networks

    calls = []

    def spy(device, dtype):
        calls.append((str(device), str(dtype)))
        tensors.configure_precision(device, dtype)

    for module in (predictor, parser, networks):
        monkeypatch.setattr(module, "configure_precision", spy)
    networks.load_networks(WeightSource.tiny(), device="cpu", dtype="float32")
    predictor.DensePose.load(WeightSource.tiny(), "cpu", "float32")
    parser.HumanParser.load("lip", WeightSource.tiny(), "cpu", "float32")
    assert calls == [("cpu", "float32")] * 3
