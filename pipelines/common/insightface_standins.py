"""Tiny stand-in for insightface's SCRFD-10G face detector (LivePortrait's det_10g and antelopev2's
scrfd_10g_bnkps have the same nine outputs), and the onnx helpers the pipelines' other stand-ins use.

Built in memory with the onnx helper API from a seed, so tests and ``tiny`` demos run insightface's real
SCRFD decoding and NMS without the licensed files. Input ``input.1`` [1,3,H,W]; per stride 8/16/32 a score
[N,1], box distances [N,4] and 5-point offsets [N,10], two anchors per cell. Strides 8 and 16 never fire.
At stride 32 the score is driven by local image contrast (|Laplacian| pooled over a 3x3 neighbourhood of
cells): only the most textured cell fires, and only when the picture has any texture at all, so a photo
gives exactly one face box and a blank image gives none.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
SCRFD_STRIDES = (8, 16, 32)
SCRFD_OUTPUTS = ("448", "471", "494", "451", "474", "497", "454", "477", "500")  # det_10g's names
BOX_HALF_SIZE = 3.0  # stride-32 units: a 192 px box at det size 512


def onnx_model(nodes, inputs, outputs, initializers, name: str) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fal-onprem")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_const(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def scrfd_standin(seed: int = 0) -> bytes:
    """A det_10g-shaped detector (see the module docstring for how it fires)."""
    rng = np.random.default_rng(seed)
    laplacian = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32).reshape(1, 1, 3, 3)
    inits = [
        onnx_const("gray_w", np.full((1, 3, 1, 1), 1 / 3)),
        onnx_const("lap_w", laplacian),
        onnx_const("sharp", 40.0),  # how fast the score falls off away from the most textured cell
        onnx_const("gain", 20.0),
        onnx_const("offset", 1.0),  # a picture needs mean |Laplacian| > offset / gain to show a face
        onnx_const("never", -30.0),
        numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "shape_score"),
        numpy_helper.from_array(np.array([-1, 4], dtype=np.int64), "shape_box"),
        numpy_helper.from_array(np.array([-1, 10], dtype=np.int64), "shape_kps"),
    ]
    nodes = [
        helper.make_node("Conv", ["input.1", "gray_w"], ["gray"]),
        helper.make_node("Conv", ["gray", "lap_w"], ["lap"], pads=[1, 1, 1, 1]),
        helper.make_node("Abs", ["lap"], ["edges"]),
    ]
    # 5 points (eyes, nose, mouth corners) relative to the anchor, in stride units.
    kps = np.array([-1.0, -0.8, 1.0, -0.8, 0.0, 0.2, -0.8, 1.2, 0.8, 1.2], dtype=np.float32)
    for level, stride in enumerate(SCRFD_STRIDES):
        s_out, b_out, k_out = SCRFD_OUTPUTS[level], SCRFD_OUTPUTS[3 + level], SCRFD_OUTPUTS[6 + level]
        p = f"s{stride}_"
        nodes.append(
            helper.make_node("AveragePool", ["edges"], [p + "pool"], kernel_shape=[stride] * 2, strides=[stride] * 2)
        )
        if stride == SCRFD_STRIDES[-1]:
            nodes += [
                helper.make_node(
                    "AveragePool",
                    [p + "pool"],
                    [p + "ctx"],
                    kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1],
                    count_include_pad=0,
                ),
                helper.make_node("ReduceMax", [p + "ctx"], [p + "max"], keepdims=1),
                helper.make_node("ReduceMean", [p + "ctx"], [p + "mean"], keepdims=1),
                helper.make_node("Sub", [p + "ctx", p + "max"], [p + "below"]),
                helper.make_node("Add", [p + "mean", "offset_eps"], [p + "norm"]),
                helper.make_node("Div", [p + "below", p + "norm"], [p + "rel"]),
                helper.make_node("Mul", [p + "rel", "sharp"], [p + "peak"]),
                helper.make_node("Mul", [p + "mean", "gain"], [p + "tex"]),
                helper.make_node("Sub", [p + "tex", "offset"], [p + "base"]),
                helper.make_node("Add", [p + "peak", p + "base"], [p + "logit1"]),
            ]
        else:
            nodes += [
                helper.make_node("Mul", [p + "pool", "zero"], [p + "z"]),
                helper.make_node("Add", [p + "z", "never"], [p + "logit1"]),
            ]
        nodes += [
            helper.make_node("Concat", [p + "logit1", p + "logit1"], [p + "logit"], axis=1),  # two anchors
            helper.make_node("Sigmoid", [p + "logit"], [p + "score"]),
        ]
        # Box and keypoint regressions: a seeded 1x1 conv of the contrast map around fixed biases.
        for kind, width, bias in (("box", 4, np.full(4, BOX_HALF_SIZE)), ("kps", 10, kps)):
            w = (rng.standard_normal((2 * width, 1, 1, 1)) * 0.01).astype(np.float32)
            inits += [onnx_const(p + kind + "_w", w), onnx_const(p + kind + "_b", np.tile(bias, 2))]
            nodes.append(helper.make_node("Conv", [p + "pool", p + kind + "_w", p + kind + "_b"], [p + kind]))
        for src, dst, shape in (
            (p + "score", s_out, "shape_score"),
            (p + "box", b_out, "shape_box"),
            (p + "kps", k_out, "shape_kps"),
        ):
            nodes += [
                helper.make_node("Transpose", [src], [src + "_nhwc"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [src + "_nhwc", shape], [dst]),
            ]
    inits += [onnx_const("zero", 0.0), onnx_const("offset_eps", 1e-6)]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])]
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["?", (1, 1, 1, 4, 4, 4, 10, 10, 10)[i]])
        for i, name in enumerate(SCRFD_OUTPUTS)
    ]
    return onnx_model(nodes, inputs, outputs, inits, "scrfd_10g_standin")
