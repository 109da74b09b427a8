"""Small seeded ONNX stand-ins for YOLOX-l and DWPose-l, built in memory with the ``onnx`` helper API.

They have the real I/O signatures, so the pipeline runs its real pre/post-processing on them:

* detector ``images [N, 3, 640, 640] -> output [N, 8400, 85]``: per stride, average-pooled colour goes
  through a random 1x1 convolution giving box offsets/sizes, objectness and class logits. Only the
  stride-32 level can fire: its objectness is ``sigmoid(60 * (s - max s) + 3)`` where ``s`` is a random
  colour "saliency" normalised by its spread over the image plus a mild preference for central cells.
  So every image gets its most salient cell as a confident person (score ~0.93), cells of nearly equal
  saliency compete in NMS, and strides 8/16 stay below the 0.1 candidate threshold. Boxes are about
  5 x 9 cells (160 x 288 letterbox pixels) with image-dependent jitter.
* pose ``input [N, 3, 384, 288] -> simcc_x [N, 133, 576], simcc_y [N, 133, 768]``: a random linear map
  of the 8x6-pooled crop shifts each keypoint around a standing whole-body template and sets its peak
  height; the outputs are Gaussian SimCC profiles (sigma 6 bins). Ears are kept low (hidden), like the
  reference stand-ins.

The batch axis of both is dynamic (the stock YOLOX export is static; ``OnnxModel`` handles both).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .detector import STRIDES
from .pose import NUM_KEYPOINTS, POSE_INPUT_H, POSE_INPUT_W, SIMCC_SPLIT_RATIO

OPSET = 17
IR_VERSION = 8
SIMCC_SIGMA = 6.0
NUM_CLASSES = 80


def _model(nodes: list, inputs: list, outputs: list, initializers: dict[str, np.ndarray], name: str) -> bytes:
    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()]
    graph = helper.make_graph(nodes, name, inputs, outputs, tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fal-onprem")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_detector(seed: int = 0) -> bytes:
    """Tiny YOLOX-shaped detector (see module doc)."""
    rng = np.random.default_rng([seed, 1])
    f32 = np.float32
    init: dict[str, np.ndarray] = {
        "inv255": np.array(1 / 255, f32),
        "sal_gain": np.array(60.0, f32),
        "sal_bias": np.array(3.0, f32),
        "sal_w": (rng.standard_normal((1, 3, 1, 1)) * 4).astype(f32),
        "flat_shape": np.array([0, 85, -1], np.int64),
    }
    nodes = [helper.make_node("Mul", ["images", "inv255"], ["x01"])]
    levels = []
    for stride in STRIDES:
        p = f"s{stride}"
        # box (4), objectness (1), classes (80) from the pooled colour; small weights = mild jitter
        weight = (rng.standard_normal((85, 3, 1, 1)) * 0.1).astype(f32)
        bias = np.zeros(85, f32)
        bias[0:2] = 0.5  # box centre in the middle of its cell
        bias[2:4] = np.log([5.0, 9.0])  # width, height in cells
        bias[4] = -8.0  # objectness: never fires (stride 32 replaces it below)
        bias[5] = 4.0  # person
        bias[6:] = -4.0
        init[f"{p}_w"], init[f"{p}_b"] = weight, bias
        nodes += [
            helper.make_node("AveragePool", ["x01"], [f"{p}_pool"], kernel_shape=[stride] * 2, strides=[stride] * 2),
            helper.make_node("Conv", [f"{p}_pool", f"{p}_w", f"{p}_b"], [f"{p}_raw"]),
            helper.make_node("Split", [f"{p}_raw", "split_sizes"], [f"{p}_box", f"{p}_obj", f"{p}_cls"], axis=1),
        ]
        obj = f"{p}_obj"
        if stride == STRIDES[-1]:
            # saliency normalised by its spread over the image, plus a mild preference for central cells
            # (breaks ties between equal colours), relative to its maximum
            nodes += [
                helper.make_node("Conv", [f"{p}_pool", "sal_w"], [f"{p}_sal"]),
                helper.make_node("ReduceMean", [f"{p}_sal"], [f"{p}_salmean"], axes=[2, 3], keepdims=1),
                helper.make_node("ReduceMax", [f"{p}_sal"], [f"{p}_salmax0"], axes=[2, 3], keepdims=1),
                helper.make_node("Sub", [f"{p}_sal", f"{p}_salmean"], [f"{p}_centred"]),
                helper.make_node("Sub", [f"{p}_salmax0", f"{p}_salmean"], [f"{p}_spread0"]),
                helper.make_node("Add", [f"{p}_spread0", "eps"], [f"{p}_spread"]),
                helper.make_node("Div", [f"{p}_centred", f"{p}_spread"], [f"{p}_norm"]),
                helper.make_node("Add", [f"{p}_norm", "sal_prior"], [f"{p}_prior"]),
                helper.make_node("ReduceMax", [f"{p}_prior"], [f"{p}_salmax"], axes=[2, 3], keepdims=1),
                helper.make_node("Sub", [f"{p}_prior", f"{p}_salmax"], [f"{p}_rel"]),
                helper.make_node("Mul", [f"{p}_rel", "sal_gain"], [f"{p}_scaled"]),
                helper.make_node("Add", [f"{p}_scaled", "sal_bias"], [f"{p}_objsal"]),
            ]
            n = 640 // stride
            g = np.arange(n) - (n - 1) / 2
            init["sal_prior"] = (-0.3 * (g[None, :] ** 2 + g[:, None] ** 2) / (n / 2) ** 2).astype(f32)[None, None]
            init["eps"] = np.array(1e-3, f32)
            obj = f"{p}_objsal"
        nodes += [
            helper.make_node("Sigmoid", [obj], [f"{p}_objp"]),
            helper.make_node("Sigmoid", [f"{p}_cls"], [f"{p}_clsp"]),
            helper.make_node("Concat", [f"{p}_box", f"{p}_objp", f"{p}_clsp"], [f"{p}_cat"], axis=1),
            helper.make_node("Reshape", [f"{p}_cat", "flat_shape"], [f"{p}_flat"]),
        ]
        levels.append(f"{p}_flat")
    init["split_sizes"] = np.array([4, 1, NUM_CLASSES], np.int64)
    nodes += [
        helper.make_node("Concat", levels, ["all"], axis=2),
        helper.make_node("Transpose", ["all"], ["output"], perm=[0, 2, 1]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 640, 640])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8400, 85])],
        init,
        "tiny_yolox",
    )


def wholebody_template() -> tuple[np.ndarray, np.ndarray]:
    """A standing person in the 288x384 crop: (133 (x, y) crop pixels, 133 peak-height logits)."""
    body = [
        (144, 70), (152, 62), (136, 62), (162, 66), (126, 66), (178, 105), (110, 105), (190, 160),
        (98, 160), (196, 210), (92, 210), (165, 210), (123, 210), (168, 275), (120, 275), (170, 335),
        (118, 335),
    ]  # fmt: skip
    feet = [(176, 348), (184, 344), (168, 342), (112, 348), (104, 344), (120, 342)]
    t = np.linspace(0, np.pi, 17)
    jaw = np.stack([144 - 18 * np.cos(t), 64 + 22 * np.sin(t)], axis=1)
    a = np.linspace(0, 2 * np.pi, 51, endpoint=False)
    inner = np.stack([144 + 11 * np.cos(a), 68 + 12 * np.sin(a)], axis=1)

    def hand(wrist: tuple[int, int], side: int) -> np.ndarray:
        fingers = [(wrist[0] + side * (f - 2) * 4 + side * j, wrist[1] + 5 + 6 * j) for f in range(5) for j in range(4)]
        return np.array([wrist, *fingers], dtype=np.float64)

    xy = np.concatenate([np.array(body + feet, np.float64), jaw, inner, hand(body[9], 1), hand(body[10], -1)])
    logits = np.full(NUM_KEYPOINTS, 1.5)
    logits[3:5] = -2.0  # ears hidden, like the reference stand-ins
    return xy, logits


def tiny_pose(seed: int = 0) -> bytes:
    """Tiny RTMPose-shaped SimCC network (see module doc)."""
    rng = np.random.default_rng([seed, 2])
    f32 = np.float32
    xy, height_logits = wholebody_template()
    features = 3 * (POSE_INPUT_H // 48) * (POSE_INPUT_W // 48)
    frac = xy / [POSE_INPUT_W, POSE_INPUT_H]
    init: dict[str, np.ndarray] = {}
    nodes = [
        helper.make_node("AveragePool", ["input"], ["pool"], kernel_shape=[48, 48], strides=[48, 48]),
        helper.make_node("Flatten", ["pool"], ["feat"], axis=1),
        helper.make_node("Gemm", ["feat", "h_w", "h_b"], ["h_logit"]),
        helper.make_node("Sigmoid", ["h_logit"], ["height"]),
        helper.make_node("Unsqueeze", ["height", "axis_last"], ["height3"]),
    ]
    init["axis_last"] = np.array([-1], np.int64)
    init["h_w"] = (rng.standard_normal((features, NUM_KEYPOINTS)) * 0.02).astype(f32)
    init["h_b"] = height_logits.astype(f32)
    init["inv_two_var"] = np.array(-0.5 / SIMCC_SIGMA**2, f32)
    outputs = []
    for axis, (name, size) in enumerate((("simcc_x", POSE_INPUT_W), ("simcc_y", POSE_INPUT_H))):
        bins = int(size * SIMCC_SPLIT_RATIO)
        p = name
        init[f"{p}_w"] = (rng.standard_normal((features, NUM_KEYPOINTS)) * 0.003).astype(f32)
        init[f"{p}_b"] = np.log(frac[:, axis] / (1 - frac[:, axis])).astype(f32)
        init[f"{p}_bins"] = np.float32(bins)
        init[f"{p}_grid"] = np.arange(bins, dtype=f32).reshape(1, 1, bins)
        nodes += [
            helper.make_node("Gemm", ["feat", f"{p}_w", f"{p}_b"], [f"{p}_logit"]),
            helper.make_node("Sigmoid", [f"{p}_logit"], [f"{p}_frac"]),
            helper.make_node("Mul", [f"{p}_frac", f"{p}_bins"], [f"{p}_mu"]),
            helper.make_node("Unsqueeze", [f"{p}_mu", "axis_last"], [f"{p}_mu3"]),
            helper.make_node("Sub", [f"{p}_grid", f"{p}_mu3"], [f"{p}_d"]),
            helper.make_node("Mul", [f"{p}_d", f"{p}_d"], [f"{p}_d2"]),
            helper.make_node("Mul", [f"{p}_d2", "inv_two_var"], [f"{p}_e"]),
            helper.make_node("Exp", [f"{p}_e"], [f"{p}_g"]),
            helper.make_node("Mul", [f"{p}_g", "height3"], [name]),
        ]
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", NUM_KEYPOINTS, bins]))
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, POSE_INPUT_H, POSE_INPUT_W])],
        outputs,
        init,
        "tiny_dwpose",
    )
