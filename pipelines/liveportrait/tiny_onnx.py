"""Tiny stand-ins for the three face ONNX models, with the real models' input/output signatures.

They are built in memory with the onnx helper API from a seed, so tests and ``tiny`` demos run the
real insightface / onnxruntime plumbing (SCRFD decoding, NMS, the 106-point alignment, the 203-point
runner) without the licensed files. They are not trained; they are rigged to behave like a face
model on photographs:

- **det_10g (SCRFD-10G, 9 outputs).** Input ``input.1`` [1,3,H,W]; per stride 8/16/32 a score
  [N,1], box distances [N,4] and 5-point offsets [N,10], two anchors per cell. Strides 8 and 16
  never fire. At stride 32 the score is driven by local image contrast (|Laplacian| pooled over a
  3x3 neighbourhood of cells): only the most textured cell fires, and only when the picture has any
  texture at all, so a photo gives exactly one face box and a blank image gives none.
- **2d106det.** Input ``data`` [1,3,192,192] -> ``fc1`` [1,212]: a fixed face-like mean shape in
  [-1,1] crop coordinates plus a small seeded linear function of the mean colour.
- **landmark.onnx (LivePortrait 203 points).** Input ``input`` [1,3,224,224] -> three outputs, the
  third [1,406] in [0,1] crop coordinates (the only one the pipeline reads; the first two are
  placeholders of made-up width). The mean shape has an open mouth, so lip-zero runs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
SCRFD_STRIDES = (8, 16, 32)
SCRFD_OUTPUTS = ("448", "471", "494", "451", "474", "497", "454", "477", "500")  # det_10g's names
BOX_HALF_SIZE = 3.0  # stride-32 units: a 192 px box at det size 512


def _model(nodes, inputs, outputs, initializers, name: str) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fal-onprem")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _const(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def scrfd_standin(seed: int = 0) -> bytes:
    """A det_10g-shaped detector; see the module docstring for how it fires."""
    rng = np.random.default_rng(seed)
    laplacian = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32).reshape(1, 1, 3, 3)
    inits = [
        _const("gray_w", np.full((1, 3, 1, 1), 1 / 3)),
        _const("lap_w", laplacian),
        _const("sharp", 40.0),  # how fast the score falls off away from the most textured cell
        _const("gain", 20.0),
        _const("offset", 1.0),  # a picture needs mean |Laplacian| > offset / gain to show a face
        _const("never", -30.0),
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
            inits += [_const(p + kind + "_w", w), _const(p + kind + "_b", np.tile(bias, 2))]
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
    inits += [_const("zero", 0.0), _const("offset_eps", 1e-6)]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])]
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["?", (1, 1, 1, 4, 4, 4, 10, 10, 10)[i]])
        for i, name in enumerate(SCRFD_OUTPUTS)
    ]
    return _model(nodes, inputs, outputs, inits, "scrfd_10g_standin")


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
        inits += [_const(out_name + "_w", w), _const(out_name + "_b", bias.reshape(-1))]
        nodes.append(helper.make_node("Gemm", ["feat", out_name + "_w", out_name + "_b"], [out_name], transB=1))
        infos.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [1, bias.size]))
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, size, size])]
    return _model(nodes, inputs, infos, inits, name)


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
