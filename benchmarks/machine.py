"""Machine description and result paths shared by the benchmark scripts."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else platform.processor()


def gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def device_label(device: str) -> str:
    """``cpu`` or the GPU's name in a file-name-safe form (e.g. ``nvidia-h100-80gb-hbm3``)."""
    name = gpu_name(device)
    return "cpu" if name is None else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def versions(*packages: str) -> dict[str, str]:
    out = {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_info(device: str = "cpu", packages: tuple[str, ...] = ("torch", "onnxruntime")) -> dict[str, Any]:
    return {
        "device": device,
        "gpu": gpu_name(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions(*packages),
    }


def write_result(name: str, device: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``results/<date>_<device>_<name>.json`` (or ``out``) and return its path."""
    path = out or RESULTS_DIR / f"{dt.date.today():%Y-%m-%d}_{device_label(device)}_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
