"""Cost of the one-time Leffa conversion (``split_fp16``): time and peak memory, on a synthetic
checkpoint with Leffa's group sizes scaled down (``--scale 1`` is the real 20.9 GB file).

    python -m benchmarks.weights_convert_bench --scale 0.05      # ~1 GB checkpoint, a few seconds

The conversion runs in a child process so its memory can be read alone: peak anonymous RSS (what
the conversion really needs) and peak RSS including the memory-mapped checkpoint pages (reclaimable).
Results go to ``benchmarks/results/<date>_<device>_weights_convert.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.machine import machine_info, write_result

ROOT = Path(__file__).resolve().parents[1]
# Leffa pose_transfer.pth: (prefix, parameters, tensors) from the reference manifest
LEFFA_GROUPS = [("vae", 83_653_863, 248), ("unet_encoder", 2_567_463_684, 1680), ("unet", 2_567_486_724, 1680)]


def synthetic_checkpoint(path: Path, scale: float) -> dict[str, int]:
    sizes: dict[str, int] = {}
    sd: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(0)
    for prefix, params, count in LEFFA_GROUPS:
        per = max(1, round(params * scale / count))
        for i in range(count):
            sd[f"{prefix}.block{i}.weight"] = torch.randn(per, generator=g)
        sizes[prefix] = per * count
    torch.save(sd, path)
    return sizes


def _rss_anon(pid: int) -> int:
    """Anonymous resident memory of a process (Linux); memory-mapped file pages are not counted,
    since the kernel can drop them under pressure."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--workdir", type=Path, default=None, help="where to write the checkpoint (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/...)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp_dir:
        tmp = Path(tmp_dir).resolve()
        src = tmp / "pose_transfer.pth"
        t0 = time.perf_counter()
        sizes = synthetic_checkpoint(src, args.scale)
        save_s = time.perf_counter() - t0
        code = (
            "import sys; from pathlib import Path; from weights.convert import run_conversion;"
            "run_conversion('split_fp16', Path(sys.argv[1]), Path(sys.argv[2]))"
        )
        t0 = time.perf_counter()
        # from the repository root, where `python -c` finds the `weights` package
        child = subprocess.Popen([sys.executable, "-c", code, str(src), str(tmp / "out")], cwd=ROOT)
        peak_anon = 0
        while child.poll() is None:
            peak_anon = max(peak_anon, _rss_anon(child.pid))
            time.sleep(0.02)
        assert child.returncode == 0
        convert_s = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
        out_bytes = sum(p.stat().st_size for p in (tmp / "out").iterdir())
        src_bytes = src.stat().st_size

    largest_fp16 = max(sizes.values()) * 2
    result = {
        "benchmark": "weights_convert",
        "device": "cpu",
        "machine": machine_info("cpu", ("torch",)),
        "scale": args.scale,
        "checkpoint_bytes": src_bytes,
        "converted_bytes": out_bytes,
        "write_checkpoint_s": round(save_s, 2),
        "convert_s": round(convert_s, 2),
        "convert_gb_per_s": round(src_bytes / convert_s / 1e9, 3),
        "peak_rss_bytes_incl_mapped_file": peak,
        "peak_anonymous_rss_bytes": peak_anon,
        "largest_group_fp16_bytes": largest_fp16,
        "full_leffa_convert_minutes_at_this_rate": round(20.874e9 / (src_bytes / convert_s) / 60, 1),
    }
    print(json.dumps(result, indent=1))
    print(f"wrote {write_result('weights_convert', 'cpu', result, args.out)}")


if __name__ == "__main__":
    main()
