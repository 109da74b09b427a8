"""onnxruntime execution providers for a worker's device, shared by every ONNX model.

``cuda:N`` pins the session to GPU N (a worker per GPU must not pile its sessions onto GPU 0).
cuDNN's exhaustive algorithm search is off: batch sizes vary per request (e.g. DWPose's crop count),
and an exhaustive search per new shape costs seconds; the arena grows by what is asked, not by
powers of two, so one large batch does not pin gigabytes for the life of the worker.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from pathlib import Path
from typing import Any

import onnxruntime as ort

log = logging.getLogger(__name__)

TRT_CACHE_ENV = "FAL_ONPREM_TRT_CACHE"

Provider = str | tuple[str, dict[str, Any]]


def device_index(device: str) -> int:
    return int(device.partition(":")[2] or 0)


@cache
def _load_cuda_libraries() -> None:
    """onnxruntime-gpu finds CUDA and cuDNN in the nvidia-* wheels that torch installs (the same CUDA 13;
    there is no system CUDA in the image) only once they are loaded into the process."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None or "CUDAExecutionProvider" not in ort.get_available_providers():
        return
    try:
        preload()
    except Exception as e:  # a system CUDA may still satisfy the provider: say why, don't fail here
        log.warning("onnxruntime could not preload the CUDA/cuDNN libraries of the nvidia wheels: %s", e)


def providers_for(device: str, tensorrt: bool = False) -> list[Provider]:
    """Providers for ``device`` ("cpu", "cuda", "cuda:1"); CPU when this build has no CUDA provider."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    _load_cuda_libraries()
    if "CUDAExecutionProvider" not in available:
        log.warning("device %s asked for, but onnxruntime has no CUDA provider: running on CPU", device)
        return ["CPUExecutionProvider"]
    device_id = device_index(device)
    providers: list[Provider] = []
    if tensorrt and "TensorrtExecutionProvider" in available:
        cache = Path(os.environ.get(TRT_CACHE_ENV, Path.home() / ".cache" / "fal-onprem" / "trt")) / f"gpu{device_id}"
        providers.append(
            (
                "TensorrtExecutionProvider",
                {"device_id": device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)},
            )
        )
    cuda_options = {
        "device_id": device_id,
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
    }
    providers.append(("CUDAExecutionProvider", cuda_options))
    providers.append("CPUExecutionProvider")
    return providers
