"""Helpers the benchmark scripts share: a run context that costs nothing, sample photos, timing."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from pipelines.common.tensors import ALLOW_TF32_ENV
from pipelines.contract import WeightSource

# skimage's sample photos: people, objects, an animal, a scene, two grey/texture ones
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")


class NullContext:
    """RunContext that keeps nothing and skips encoding (the worker's job, timed separately if at all)."""

    def log(self, message: str, item: int | None = None, level: str = "INFO") -> None: ...

    def progress(self, step: int, total: int, item: int | None = None) -> None: ...

    def is_cancelled(self, item: int) -> bool:
        return False

    def seed(self, item: int) -> int:
        return item

    def save_image(self, item: int, image: Any, output_format: str = "png") -> dict[str, Any]:
        width, height = image.size if isinstance(image, Image.Image) else np.asarray(image).shape[1::-1]
        content_type = "image/jpeg" if output_format in ("jpeg", "jpg") else f"image/{output_format}"
        return {"url": "about:blank", "content_type": content_type, "width": width, "height": height}


def sample_photos(
    names: Sequence[str] = SAMPLE_PHOTOS,
    size: tuple[int, int] | None = None,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> list[Image.Image]:
    """skimage sample images as RGB PIL images (grey ones replicated), resized to ``size`` (W, H) if given."""
    import skimage.data

    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in names]
    return [p.resize(size, resample) for p in photos] if size else photos


def add_source_args(parser: argparse.ArgumentParser, default: str) -> None:
    """``--source {random_full,tiny,real}`` and ``--weights-dir`` (for ``real``)."""
    parser.add_argument("--source", choices=["random_full", "tiny", "real"], default=default)
    parser.add_argument("--weights-dir", type=str, default=None, help="for --source real (default: HF cache)")


def weight_source(args: argparse.Namespace) -> WeightSource:
    if args.source == "real":
        return WeightSource.real(args.weights_dir)
    return {"tiny": WeightSource.tiny, "random_full": WeightSource.random_full}[args.source]()


def add_tf32_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tf32",
        action="store_true",
        help=f"float32 on CUDA: allow TF32 convolutions/matmuls (sets {ALLOW_TF32_ENV}=1 before loading); "
        "otherwise as the environment says (default: true float32, as the server runs)",
    )


def apply_tf32(args: argparse.Namespace) -> None:
    """The pipelines set the TF32 flags when they load (``configure_precision``), so a benchmark opts in
    the way a deployment does: through the environment, before loading."""
    if args.tf32:
        os.environ[ALLOW_TF32_ENV] = "1"


def tf32_state(device: str) -> dict[str, bool] | None:
    """The effective TF32 flags on a CUDA ``device`` (record them after loading); None elsewhere."""
    if not device.startswith("cuda"):
        return None
    import torch

    return {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}


def on_device(device: str) -> contextlib.AbstractContextManager[Any]:
    """Make a ``cuda:i`` device current, so that calls without a device argument (events, caches) use it."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.device(torch.device(device))
    return contextlib.nullcontext()


def sync(device: str) -> None:
    """Wait for queued GPU work on ``device`` (not the current device), so wall-clock times include it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))


def timed(fn: Callable[[], Any], iters: int, *, warmup: int = 0, device: str = "cpu") -> list[float]:
    """Seconds per call of ``fn``, ``iters`` times after ``warmup`` untimed calls; a torch CUDA ``device``
    is synchronised around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times
