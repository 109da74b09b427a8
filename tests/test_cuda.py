"""Every served pipeline on a CUDA device, tiny weights (``pytest -m cuda``; run by benchmarks/gpu_check.sh).

Tolerances, on the output images (uint8):
- float32 on CUDA against float32 on CPU: PSNR >= 45 dB (TF32 is off for float32, so only summation order
  differs; 45 dB is an RMS error of about 1.4 grey levels, which a wrong kernel or layout exceeds at once);
- the pipeline's GPU half precision against CUDA float32: PSNR >= the case's bound (35 dB by default);
- a batch against each item alone, in the GPU dtype: PSNR >= 45 dB.
Stepwise pipelines must not synchronise the host inside ``step`` (torch's sync debug mode raises).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.contract import ItemError, Pipeline, StepwisePipeline, WeightSource
from tests.support.fake_ctx import FakeContext
from tests.support.pipeline_cases import CASES, Case

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (run benchmarks/gpu_check.sh on a GPU)"),
]

SEEDS = [11, 12]
FLOAT32_PSNR_DB = 45.0
BATCH_PSNR_DB = 45.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@functools.cache
def pipeline(endpoint: str, device: str, dtype: str) -> Pipeline:
    case = next(c for c in CASES if c.endpoint == endpoint)
    return case.pipeline_class().load(WeightSource.tiny(0), device, dtype)


def gpu_dtype(case: Case) -> str:
    return case.pipeline_class().gpu_dtype


def run(case: Case, device: str, dtype: str, which: list[int] | None = None) -> list[np.ndarray]:
    pipe = pipeline(case.endpoint, device, dtype)
    inputs = case.inputs()
    which = list(range(len(inputs))) if which is None else which
    ctx = FakeContext(seeds=[SEEDS[i] for i in which])
    prepared = [pipe.prepare(inputs[i], case.loader()) for i in which]
    outputs = pipe.run(prepared, ctx)
    errors = [o for o in outputs if isinstance(o, ItemError)]
    assert not errors, [e.to_dict() for e in errors]
    images = [np.asarray(ctx.saved[i]) for i in range(len(which))]
    assert all(image.any() for image in images), "a blank output would make every comparison pass"
    return images


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.endpoint)
def test_float32_on_cuda_matches_cpu(case: Case) -> None:
    cpu = run(case, "cpu", "float32")
    gpu = run(case, "cuda", "float32")
    for a, b in zip(cpu, gpu, strict=True):
        assert psnr(a, b) >= FLOAT32_PSNR_DB


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.endpoint)
def test_gpu_precision_stays_close_to_float32(case: Case) -> None:
    if gpu_dtype(case) == "float32":
        pytest.skip(f"{case.endpoint} runs float32 on GPU")
    full = run(case, "cuda", "float32")
    half = run(case, "cuda", gpu_dtype(case))
    for a, b in zip(full, half, strict=True):
        assert psnr(a, b) >= case.half_psnr_db


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.endpoint)
def test_batched_equals_single_on_cuda(case: Case) -> None:
    dtype = gpu_dtype(case)
    batched = run(case, "cuda", dtype)
    for i, together in enumerate(batched):
        (alone,) = run(case, "cuda", dtype, which=[i])
        assert psnr(together, alone) >= BATCH_PSNR_DB


def onnx_sessions(obj: Any, depth: int = 4) -> list[Any]:
    """Every onnxruntime InferenceSession reachable from ``obj``'s attributes."""
    import onnxruntime as ort

    found: list[Any] = []
    seen: set[int] = set()

    def walk(value: Any, level: int) -> None:
        if id(value) in seen or level > depth:
            return
        seen.add(id(value))
        if isinstance(value, ort.InferenceSession):
            found.append(value)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, level + 1)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v, level + 1)
        elif hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module | type):
            for v in vars(value).values():
                walk(v, level + 1)

    walk(obj, 0)
    return found


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.endpoint)
def test_onnxruntime_runs_on_the_cuda_provider(case: Case) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDA provider here (install onnxruntime-gpu)")
    sessions = onnx_sessions(pipeline(case.endpoint, "cuda", gpu_dtype(case)))
    if not sessions:
        pytest.skip(f"{case.endpoint} has no ONNX model")
    for session in sessions:
        assert session.get_providers()[0] == "CUDAExecutionProvider", session.get_providers()


@pytest.mark.parametrize(
    "case", [c for c in CASES if issubclass(c.pipeline_class(), StepwisePipeline)] or [None], ids=str
)
def test_denoising_step_never_waits_for_the_host(case: Case | None) -> None:
    if case is None:
        pytest.skip("no stepwise pipeline is served")
    pipe = pipeline(case.endpoint, "cuda", gpu_dtype(case))
    assert isinstance(pipe, StepwisePipeline)
    inputs = case.inputs()
    prepared = [pipe.prepare(inp, case.loader()) for inp in inputs]
    for i, item in enumerate(prepared):
        item.key = i
    ctx = FakeContext(seeds=SEEDS)
    state = pipe.begin(prepared, ctx)
    pipe.step(state, ctx)  # warm-up: lazy initialisations may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pipe.step(state, ctx)
    finally:
        torch.cuda.set_sync_debug_mode("default")
