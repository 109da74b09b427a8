"""Tiny stand-in for antelopev2's ArcFace (glintr100.onnx), with its signature: ``input.1`` [N,3,112,112] ->
[N,512] raw (un-normalised) features. Built in memory from a seed, so tests and ``tiny`` demos run
insightface's real ArcFace runner (norm_crop alignment, blob normalisation) without the licensed file.
The detector stand-in is the shared SCRFD-10G-shaped one (antelopev2's scrfd_10g_bnkps has det_10g's
nine outputs): one face on a textured picture, none on a blank one.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from pipelines.common.insightface_standins import onnx_const, onnx_model, scrfd_standin

__all__ = ["arcface_standin", "scrfd_standin"]

ARCFACE_SIZE = 112
POOL = 14  # 112 / 14 = 8x8 cells of mean colour


def arcface_standin(seed: int = 0) -> bytes:
    """8x8 mean-colour cells -> a seeded linear map to 512 features (norm in the tens, like glintr100's)."""
    rng = np.random.default_rng(seed + 7)
    cells = 3 * (ARCFACE_SIZE // POOL) ** 2
    weight = (rng.standard_normal((512, cells)) * 0.15).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["cells"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        helper.make_node("Flatten", ["cells"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "b"], ["fc1"], transB=1),
    ]
    inits = [onnx_const("w", weight), onnx_const("b", rng.standard_normal(512).astype(np.float32))]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, ARCFACE_SIZE, ARCFACE_SIZE])]
    outputs = [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 512])]
    return onnx_model(nodes, inputs, outputs, inits, "glintr100_standin")
