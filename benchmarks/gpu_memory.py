"""Resident GPU memory of every served pipeline, and whether they all fit on this GPU together.

    python -m benchmarks.gpu_memory --device cuda [--source random_full] [--out FILE]

Loads each served pipeline in the dtype the worker would use on this device and keeps it loaded, so the
last line says whether all of them fit at once. "Resident" is the device-wide drop in free memory
(``cudaMemGetInfo``), which counts onnxruntime's and cuDNN's allocations too, next to what torch's
allocator holds. The memory budget in force is ``FAL_ONPREM_GPU_MEMORY_BUDGET`` when set.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

from benchmarks.common import add_source_args, weight_source
from benchmarks.machine import machine_info, write_result
from pipelines import registry

GIB = 2**30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    add_source_args(parser, "random_full")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    if not (args.device.startswith("cuda") and torch.cuda.is_available()):
        print("no CUDA device: resident GPU memory cannot be measured here", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    total = torch.cuda.get_device_properties(device).total_memory
    budget = os.environ.get("FAL_ONPREM_GPU_MEMORY_BUDGET")
    kept, rows = [], []
    for spec in registry.endpoints().values():
        if spec.pipeline is None:
            continue
        cls = registry.pipeline_class(spec)
        gc.collect()
        torch.cuda.synchronize(device)
        free_before = torch.cuda.mem_get_info(device)[0]
        allocated_before = torch.cuda.memory_allocated(device)
        started = time.perf_counter()
        try:
            pipe = cls.load(weight_source(args), args.device, cls.gpu_dtype)
        except Exception as exc:  # one pipeline that cannot load must not hide the others' numbers
            rows.append({"endpoint": spec.endpoint_id, "error": f"{type(exc).__name__}: {exc}"})
            continue
        torch.cuda.synchronize(device)
        kept.append(pipe)
        row = {
            "endpoint": spec.endpoint_id,
            "dtype": cls.gpu_dtype,
            "load_s": round(time.perf_counter() - started, 1),
            "resident_gib": round((free_before - torch.cuda.mem_get_info(device)[0]) / GIB, 3),
            "torch_allocated_gib": round((torch.cuda.memory_allocated(device) - allocated_before) / GIB, 3),
            "declared_resident_gib": round(pipe.resident_bytes() / GIB, 3),
        }
        rows.append(row)
        print(f"{spec.endpoint_id:<32} {row['resident_gib']:>8.2f} GiB resident ({cls.gpu_dtype}, {row['load_s']} s)")
    together = sum(r.get("resident_gib", 0.0) for r in rows)
    fits = together * GIB < (int(budget) if budget else total)
    verdict = (
        f"all {len(kept)} loaded pipelines together: {together:.2f} GiB of {total / GIB:.1f} GiB"
        f"{f' (budget {int(budget) / GIB:.1f} GiB)' if budget else ''}: {'fit' if fits else 'do NOT fit'}"
    )
    print(verdict)
    payload = {
        "benchmark": "gpu_memory",
        "source": args.source,
        "machine": machine_info(args.device, ("torch", "onnxruntime", "diffusers")),
        "pipelines": rows,
        "together_gib": round(together, 3),
        "device_total_gib": round(total / GIB, 2),
        "budget_bytes": int(budget) if budget else None,
        "all_fit": fits,
        "verdict": verdict,
    }
    print(f"-> {write_result('gpu_memory', args.device, payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
