"""Tiny stand-ins for the three face ONNX models, with the real models' input/output signatures.

They are built in memory with the onnx helper API from a seed, so tests and ``tiny`` demos run the
real insightface / onnxruntime plumbing (SCRFD decoding, NMS, the 106-point alignment, the 203-point
runner) without the licensed files. They are not trained; they are rigged to behave like a face
model on photographs:

- **det_10g (SCRFD-10G, 9 outputs)**: ``pipelines.common.insightface_standins.scrfd_standin`` (shared with
  PuLID's antelopev2 detector).
- **2d106det.** Input ``data`` [1,3,192,192] -> ``fc1`` [1,212]: a fixed face-like mean shape in
  [-1,1] crop coordinates plus a small seeded linear function of the mean colour.
- **landmark.onnx (LivePortrait 203 points).** Input ``input`` [1,3,224,224] -> three outputs, the
  third [1,406] in [0,1] crop coordinates (the only one the pipeline reads; the first two are
  placeholders of made-up width). The mean shape has an open mouth, so lip-zero runs.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from pipelines.common.insightface_standins import onnx_const, onnx_model, scrfd_standin

__all__ = ["landmark106_standin", "landmark203_standin", "mean_shape_106", "mean_shape_203", "scrfd_standin"]


def _ellipse(n: int, center: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([center[0] + radii[0] * np.cos(t), center[1] + radii[1] * np.sin(t)], axis=1)


def mean_shape_106() -> np.ndarray:
    """A face-like 106-point layout in [-1,1] coordinates of the 1.5x-box alignment crop."""
    pts = _ellipse(106, (0.0, 0.05), (0.5, 0.6))
    pts[[33, 35, 40, 39]] = [(-0.32, -0.12), (-0.2, -0.17), (-0.08, -0.12), (-0.2, -0.07)]
    pts[[87, 89, 94, 93]] = [(0.08, -0.12), (0.2, -0.17), (0.32, -0.12), (0.2, -0.07)]
    pts[[52, 61]] = [(-0.15, 0.33), (0.15, 0.33)]
    return pts.astype(np.float32)


def mean_shape_203() -> np.ndarray:
    """A face-like 203-point layout in [0,1] coordinates of the 224 landmark crop (mouth open)."""
    pts = _ellipse(203, (0.5, 0.55), (0.28, 0.33))
    pts[[0, 6, 12, 18]] = [(0.33, 0.45), (0.38, 0.43), (0.43, 0.45), (0.38, 0.47)]
    pts[[24, 30, 36, 42]] = [(0.57, 0.45), (0.62, 0.43), (0.67, 0.45), (0.62, 0.47)]
    pts[[48, 66, 90, 102]] = [(0.42, 0.68), (0.58, 0.68), (0.5, 0.66), (0.5, 0.7)]
    return pts.astype(np.float32)


def _linear_landmarker(
    input_name: str, size: int, outputs: list[tuple[str, np.ndarray]], seed: int, name: str
) -> bytes:
    """Global mean colour -> each output = bias + a small seeded linear map of it."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("GlobalAveragePool", [input_name], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["feat"]),
    ]
    inits, infos = [], []
    for out_name, bias in outputs:
        w = (rng.standard_normal((bias.size, 3)) * 0.002).astype(np.float32)
        inits += [onnx_const(out_name + "_w", w), onnx_const(out_name + "_b", bias.reshape(-1))]
        nodes.append(helper.make_node("Gemm", ["feat", out_name + "_w", out_name + "_b"], [out_name], transB=1))
        infos.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [1, bias.size]))
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, size, size])]
    return onnx_model(nodes, inputs, infos, inits, name)


def landmark106_standin(seed: int = 0) -> bytes:
    """A 2d106det-shaped landmarker: ``data`` [1,3,192,192] -> ``fc1`` [1,212]."""
    return _linear_landmarker("data", 192, [("fc1", mean_shape_106())], seed + 1, "landmark_2d_106_standin")


def landmark203_standin(seed: int = 0) -> bytes:
    """A landmark.onnx-shaped landmarker: ``input`` [1,3,224,224] -> 3 outputs, the third [1,406]."""
    rng = np.random.default_rng(seed + 2)
    outputs = [
        ("output_0", rng.uniform(0, 1, 214).astype(np.float32)),
        ("output_1", rng.uniform(0, 1, 262).astype(np.float32)),
        ("output_2", mean_shape_203()),
    ]
    return _linear_landmarker("input", 224, outputs, seed + 3, "landmark_203_standin")
