"""benchmarks/gpu_check.sh on a machine without CUDA: it says so, runs what it can, and exits 0."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import rows_of

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the full check would run")
def test_without_cuda_the_check_says_so_and_exits_0(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stdout
    for line in ("torch:", "onnxruntime:", "cudnn:", "nvidia_smi:"):
        assert line in proc.stdout
    summary = (tmp_path / "summary.md").read_text()
    assert "result: no CUDA device" in summary and "| pytest_cuda | ok |" in summary
    assert "skipped" in (tmp_path / "pytest_cuda.txt").read_text()


def test_summary_rows_come_from_every_images_per_s_record() -> None:
    record = json.loads(next((ROOT / "benchmarks/results").glob("*_cpu_dwpose.json")).read_text())
    rows = rows_of("dwpose", record)
    assert rows and all(r["images_per_s"] > 0 and r["s_per_image"] == round(1 / r["images_per_s"], 4) for r in rows)
    assert {r["batch"] for r in rows} >= {1}
