"""Expression-editor maths (ComfyUI-AdvancedLivePortrait calc_fe + LivePortrait keypoint algebra)
against the golden file made with the original code (18 parameter cases)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.liveportrait.editing import (
    ExpressionEdit,
    SourceMotion,
    batch_deltas,
    eye_open_ratios,
    lip_open_ratio,
    lip_zero_delta,
    stitch,
)

ATOL = 1e-6


@pytest.fixture(scope="module")
def golden(reference_dir: Path):
    from safetensors.torch import load_file

    from pipelines.liveportrait.networks.configs import StitchingConfig
    from pipelines.liveportrait.networks.stitching import StitchingRetargeting

    fixtures = reference_dir / "liveportrait" / "fixtures"
    cases = json.loads((fixtures / "edit_math.cases.json").read_text())["cases"]
    mlps = StitchingRetargeting(StitchingConfig()).eval()
    mlps.load_state_dict(load_file(str(fixtures / "stitching_retargeting_module.weights.safetensors")))
    return load_file(str(fixtures / "edit_math.io.safetensors")), cases, mlps


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual, expected.reshape(actual.shape), rtol=0, atol=atol)


@torch.no_grad()
def test_source_keypoints(golden):
    data, _, mlps = golden
    raw = {k.removeprefix("source.raw."): v for k, v in data.items() if k.startswith("source.raw.")}
    src = SourceMotion.from_raw(raw)
    close(src.pitch, data["source.pitch_deg"], 1e-5)
    close(src.yaw, data["source.yaw_deg"], 1e-5)
    close(src.roll, data["source.roll_deg"], 1e-5)
    close(src.rotation(), data["source.R_s"])
    x_s = src.source_keypoints()
    close(x_s, data["source.x_s"])
    close(lip_zero_delta(mlps.lip, x_s, data["source.c_s_lip"][:, 0]), data["source.lip_zero_delta"])


@torch.no_grad()
def test_every_parameter_case(golden):
    data, cases, mlps = golden
    raw = {k.removeprefix("source.raw."): v for k, v in data.items() if k.startswith("source.raw.")}
    src = SourceMotion.from_raw(raw)
    x_s = src.source_keypoints()
    lip = lip_zero_delta(mlps.lip, x_s, data["source.c_s_lip"][:, 0])
    for i, case in enumerate(cases):
        p = f"case{i:02d}."
        delta_exp, delta_rot = batch_deltas([ExpressionEdit(**case)])
        close(delta_exp, data[p + "delta_exp"])
        close(delta_rot, data[p + "delta_rot_deg"])
        x_d, r_new = src.driving_keypoints(delta_exp, delta_rot)
        close(r_new, data[p + "R_new"])
        close(x_d, data[p + "x_d"])
        stitched = stitch(mlps.stitching, x_s, x_d)
        close(stitched, data[p + "x_d_stitched"])
        close(stitched + lip, data[p + "x_d_stitched_plus_lip_zero"])


@torch.no_grad()
def test_batched_equals_single(golden):
    """All 18 cases in one batch (sources repeated) give the per-case results."""
    data, cases, mlps = golden
    raw = {k.removeprefix("source.raw."): v for k, v in data.items() if k.startswith("source.raw.")}
    n = len(cases)
    src = SourceMotion.from_raw({k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in raw.items()})
    x_s = src.source_keypoints()
    x_d, _ = src.driving_keypoints(*batch_deltas([ExpressionEdit(**c) for c in cases]))
    stitched = stitch(mlps.stitching, x_s, x_d)
    for i in range(n):
        close(stitched[i : i + 1], data[f"case{i:02d}.x_d_stitched"])


def test_open_ratios_use_the_203_point_indices():
    lmk = np.zeros((203, 2), np.float32)
    lmk[48], lmk[66] = (0, 0), (10, 0)  # mouth corners 10 apart
    lmk[90], lmk[102] = (5, -1), (5, 2)  # inner lips 3 apart
    lmk[0], lmk[12], lmk[6], lmk[18] = (0, 0), (4, 0), (2, -1), (2, 1)
    lmk[24], lmk[36], lmk[30], lmk[42] = (0, 0), (8, 0), (4, 0), (4, 2)
    assert lip_open_ratio(lmk) == pytest.approx(0.3, rel=1e-5)
    np.testing.assert_allclose(eye_open_ratios(lmk), [0.5, 0.25], rtol=1e-5)
