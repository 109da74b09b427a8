"""Machine description and result paths shared by the benchmark scripts."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# package name -> (module whose __version__ wins once imported: it keeps build tags like "+cu132",
#                  distributions to ask otherwise)
_PACKAGES = {
    "opencv": ("cv2", ("opencv-python-headless", "opencv-python", "opencv-contrib-python")),
}


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else platform.processor()


def _nvidia_smi(index: int) -> dict[str, Any]:
    try:
        line = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=name,driver_version,memory.total",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    name, driver, memory_mib = (v.strip() for v in line.split(","))
    return {"gpu": name, "gpu_driver": driver, "gpu_memory_gib": round(float(memory_mib) / 1024, 1)}


@functools.cache
def gpu_info(device: str) -> dict[str, Any]:
    """Name, driver and memory of a ``cuda[:i]`` device (torch's view first, as it honours
    CUDA_VISIBLE_DEVICES; nvidia-smi for the driver, or for everything without torch); ``{}`` otherwise."""
    if not device.startswith("cuda"):
        return {}
    index = int(device.partition(":")[2] or 0)
    info = _nvidia_smi(index)
    try:
        import torch
    except ImportError:
        return info
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(index)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    return info


def device_label(device: str) -> str:
    """``cpu`` or the GPU's name in a file-name-safe form (e.g. ``nvidia-h100-80gb-hbm3``)."""
    name = gpu_info(device).get("gpu")
    return "cpu" if name is None else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def versions(*packages: str) -> dict[str, str]:
    out = {}
    for pkg in packages:
        module, dists = _PACKAGES.get(pkg, (pkg, (pkg,)))
        if module in sys.modules and hasattr(sys.modules[module], "__version__"):
            out[pkg] = str(sys.modules[module].__version__)
            continue
        for dist in dists:
            try:
                out[pkg] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def machine_info(
    device: str = "cpu", packages: tuple[str, ...] = ("torch", "onnxruntime"), **extra: Any
) -> dict[str, Any]:
    """What a result depends on besides the code: hardware, its load, and the versions of ``packages``.

    Thread counts are recorded for libraries the script already imported; ``extra`` adds
    script-specific entries (e.g. onnxruntime providers).
    """
    info: dict[str, Any] = {
        "device": device,
        "gpu": None,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        # CPU numbers on a shared machine are only as good as its load
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions(*packages),
    }
    info |= gpu_info(device)
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    if "cv2" in sys.modules:
        info["cv2_threads"] = sys.modules["cv2"].getNumThreads()
    return info | extra


def write_result(name: str, device: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``results/<date>_<device>_<name>.json`` (or ``out``) and return its path.

    The record starts with the UTC time it was written unless ``payload`` has its own ``date``.
    """
    path = out or RESULTS_DIR / f"{dt.date.today():%Y-%m-%d}_{device_label(device)}_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **payload}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
