"""One GPU check: versions, missing packages, ``pytest -m cuda``, every pipeline's benchmark, memory.

    bash benchmarks/gpu_check.sh [OUT]        # OUT: folder for the JSON files and summary.md

Made for a GPU that is lent briefly: everything runs in one command within ``--budget-s`` (8 minutes by
default). Each part has its own time budget; a part that would not fit in what is left is skipped and
the summary says so. On a machine without CUDA it states "no CUDA device", runs what it can (versions,
the CUDA tests, which skip) and exits 0.

Packages a GPU host lacks are installed first: from a wheel folder when one is there (``.whl/`` at the
repository root, made by ``benchmarks/gpu_wheels.sh`` on a machine with PyPI, for hosts without
network), else from the lock file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
LOCK = ROOT / "uv.lock"

# module -> distribution: what the worker and the benchmarks import
REQUIRED = {
    "torch": "torch",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "timm": "timm",
    "onnxruntime": "onnxruntime",
    "cv2": "opencv-python-headless",
    "insightface": "insightface",
    "skimage": "scikit-image",
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "pydantic_settings": "pydantic-settings",
    "nacl": "pynacl",
    "httpx": "httpx",
    "prometheus_client": "prometheus-client",
    "safetensors": "safetensors",
    "huggingface_hub": "huggingface_hub",
    "pytest": "pytest",
}


@dataclass(frozen=True)
class Part:
    name: str
    argv: list[str]  # run with this Python; "{out}" is replaced by the part's result file
    budget_s: int


def bench(module: str, *args: str) -> list[str]:
    return ["-m", f"benchmarks.{module}", *args, "--out", "{out}"]


CUDA_HALF = ("--device", "cuda", "--dtype", "float16", "--source", "random_full")
LEFFA_ARGS = ("--acceleration", "off", "--repeats", "1", "--baseline")

# fal's default sizes and steps, batch 1 and a larger batch; the diffusion pipelines first (they are what a
# GPU is for), each with the original way beside it; what does not fit in the budget is skipped and said so
PARTS = [
    Part("catvton", bench("catvton_bench", "--device", "cuda", "--batch-sizes", "1", "4", "--repeats", "1"), 100),
    Part("pulid", bench("pulid_bench", *CUDA_HALF, "--batch-sizes", "1", "4", "--repeats", "2"), 90),
    Part("leffa", bench("leffa_bench", *CUDA_HALF, "--batch-sizes", "1", "2", *LEFFA_ARGS), 120),
    Part("liveportrait", bench("liveportrait_bench", *CUDA_HALF, "--batch-sizes", "1", "8"), 45),
    Part("dwpose", bench("dwpose_bench", "--device", "cuda", "--source", "random_full", "--batches", "1", "16"), 35),
    Part("server_overhead", bench("server_overhead", "--requests", "100", "--status-seconds", "2"), 30),
    Part("memory", bench("gpu_memory", "--device", "cuda"), 90),
]


def say(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def versions() -> dict[str, Any]:
    """Device, driver, torch/CUDA/cuDNN and onnxruntime versions (printed first)."""
    info: dict[str, Any] = {"python": sys.version.split()[0]}
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()  # fmt: skip
        info["nvidia_smi"] = smi.splitlines()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    try:
        import torch

        info |= {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": torch.cuda.is_available(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
    except ImportError:
        info["torch"] = None
        info["cuda_available"] = False
    try:
        import onnxruntime as ort

        info |= {"onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers()}
    except ImportError:
        info["onnxruntime"] = None
    return info


def missing_modules() -> list[str]:
    return [module for module in REQUIRED if importlib.util.find_spec(module) is None]


def install_missing() -> dict[str, Any]:
    """Install what is missing, from ``.whl/`` (offline hosts) or the lock file; report what happened."""
    missing = missing_modules()
    if not missing:
        return {"missing": [], "installed": "nothing to install"}
    dists = [REQUIRED[m] for m in missing]
    say(f"missing: {', '.join(dists)}")
    if WHEELS.is_dir():
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(WHEELS),
               "--no-build-isolation", "--quiet", *dists]  # fmt: skip
    elif LOCK.is_file():
        # the lock's exact versions (GPU onnxruntime) through uv, which reads uv.lock; needs PyPI
        script = (
            f"{sys.executable} -m pip install --quiet uv && {sys.executable} -m uv export --frozen --no-emit-project "
            f"--extra gpu --extra dev -o /tmp/gpu_check_requirements.txt && {sys.executable} -m pip install --quiet "
            "-r /tmp/gpu_check_requirements.txt"
        )
        cmd = ["bash", "-c", script]
    else:
        return {"missing": dists, "installed": "no .whl/ folder and no lock file: not installed"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    still = [REQUIRED[m] for m in missing_modules()]
    say(f"install exit {proc.returncode}; still missing: {', '.join(still) or 'none'}")
    return {"missing": dists, "command": " ".join(cmd), "exit": proc.returncode, "still_missing": still,
            "stderr_tail": proc.stderr[-2000:]}  # fmt: skip


def run_part(part: Part, out_dir: Path, remaining_s: float) -> dict[str, Any]:
    if part.budget_s > remaining_s:
        say(f"{part.name}: skipped (budget {part.budget_s} s, {remaining_s:.0f} s left)")
        return {"part": part.name, "status": "skipped", "why": f"needs {part.budget_s} s, {remaining_s:.0f} s left"}
    out = out_dir / f"{part.name}.json"
    argv = [sys.executable, *(a.replace("{out}", str(out)) for a in part.argv)]
    say(f"{part.name}: {' '.join(argv[1:])} (budget {part.budget_s} s)")
    log = out_dir / f"{part.name}.log"
    started = time.monotonic()
    try:
        with log.open("w") as fh:
            proc = subprocess.run(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=part.budget_s)
        status = "ok" if proc.returncode == 0 and out.is_file() else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {part.budget_s} s"
    took = time.monotonic() - started
    say(f"{part.name}: {status} in {took:.0f} s")
    if status != "ok":
        print(log.read_text()[-3000:], flush=True)
    result = out.name if out.is_file() else None
    return {"part": part.name, "status": status, "seconds": round(took, 1), "result": result}


def run_cuda_tests(out_dir: Path, budget_s: int) -> dict[str, Any]:
    report = out_dir / "pytest_cuda.txt"
    argv = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    say(f"pytest -m cuda (budget {budget_s} s)")
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=budget_s)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        text, code = f"{exc.stdout or ''}\ntimed out after {budget_s} s", -1
    report.write_text(text)
    lines = [line for line in text.splitlines() if line.strip()]
    tail = lines[-1] if lines else ""
    say(f"pytest -m cuda: {tail}")
    if code not in (0, 5):
        print(text[-4000:], flush=True)
    return {"part": "pytest_cuda", "status": "ok" if code == 0 else f"exit {code}", "summary": tail,
            "seconds": round(time.monotonic() - started, 1), "result": report.name}  # fmt: skip


def rows_of(name: str, record: Any) -> list[dict[str, Any]]:
    """Table rows from a benchmark JSON: every object that reports ``images_per_s``."""
    rows: list[dict[str, Any]] = []

    def walk(value: Any, label: str) -> None:
        if isinstance(value, dict):
            if "images_per_s" in value:
                ips = value["images_per_s"]
                peak = next((v for k, v in value.items() if k.startswith("peak")), None)
                rows.append({
                    "benchmark": name,
                    "case": label or "-",
                    "batch": value.get("batch", value.get("batch_size", "-")),
                    "images_per_s": ips,
                    "s_per_image": round(1 / ips, 4) if ips else None,
                    "peak_gpu_memory": peak,
                    "mfu": value.get("mfu"),
                })  # fmt: skip
            for key, sub in value.items():
                if isinstance(sub, dict | list):
                    walk(sub, f"{label}.{key}".strip("."))
        elif isinstance(value, list):
            for i, sub in enumerate(value):
                walk(sub, f"{label}[{i}]")

    walk(record, "")
    return rows


def write_summary(out_dir: Path, info: dict[str, Any], parts: list[dict[str, Any]]) -> Path:
    lines = ["# GPU check", "", f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "| part | status | seconds |", "|---|---|---|"]
    lines += [f"| {p['part']} | {p['status']}{' — ' + p['why'] if 'why' in p else ''} | {p.get('seconds', '')} |"
              for p in parts]  # fmt: skip
    rows = []
    for p in parts:
        path = out_dir / str(p.get("result"))
        if p.get("result") and path.suffix == ".json" and path.is_file():
            rows += rows_of(p["part"], json.loads(path.read_text()))
    if rows:
        lines += ["", "| benchmark | case | batch | images/s | s/image | peak GPU memory | MFU |", "|---" * 7 + "|"]
        lines += [f"| {r['benchmark']} | {r['case']} | {r['batch']} | {r['images_per_s']} | {r['s_per_image']} | "
                  f"{r['peak_gpu_memory'] if r['peak_gpu_memory'] is not None else '-'} | "
                  f"{r['mfu'] if r['mfu'] is not None else '-'} |" for r in rows]  # fmt: skip
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(os.environ.get("OUT") or ROOT / "benchmarks/results/gpu_check")
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-time budget of the whole check")
    parser.add_argument("--cuda-tests-budget-s", type=int, default=120)
    args = parser.parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)

    info = versions()
    for key, value in info.items():
        say(f"{key}: {value}")
    parts: list[dict[str, Any]] = [{"part": "install", "status": json.dumps(install_missing())[:300]}]
    if not info.get("cuda_available"):
        say("no CUDA device: the CUDA tests skip and no GPU benchmark runs")
        parts.append(run_cuda_tests(args.out, args.cuda_tests_budget_s))
        path = write_summary(args.out, {**info, "result": "no CUDA device"}, parts)
        say(f"no CUDA device; summary: {path}")
        return 0

    parts.append(run_cuda_tests(args.out, args.cuda_tests_budget_s))
    for part in PARTS:
        parts.append(run_part(part, args.out, args.budget_s - (time.monotonic() - started)))
    path = write_summary(args.out, info, parts)
    say(f"done in {time.monotonic() - started:.0f} s; summary: {path}")
    print(path.read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
