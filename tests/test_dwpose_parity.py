"""Stage-by-stage parity with fal's DWPose code path (../shared/reference/dwpose/postprocess_golden).

The golden holds every intermediate of one run of fal's controlnet-aux fork on a 301x227 image with the
tiny stand-in ONNX models; each stage here is fed the golden's previous stage, so a failure names the
stage that differs. Integers are compared exactly, floats to 1e-4, canvases pixel for pixel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.reference import missing_reference

pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

from pipelines.dwpose import detector, draw, pose, preprocess  # noqa: E402
from pipelines.dwpose.runtime import OnnxModel  # noqa: E402

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def dw_dir(reference_dir):
    path = reference_dir / "dwpose"
    if not (path / "postprocess_golden.safetensors").is_file():
        missing_reference(f"DWPose golden not found in {path}")
    return path


@pytest.fixture(scope="module")
def golden(dw_dir) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(dw_dir / "postprocess_golden.safetensors")


@pytest.fixture(scope="module")
def golden_meta(dw_dir) -> dict:
    return json.loads((dw_dir / "postprocess_golden.json").read_text())


def test_s1_resize_and_edge_pad(golden, golden_meta):
    padded = preprocess.resize_with_pad(golden["in.image_rgb_uint8"])
    # cv2's INTER_CUBIC upscale rounds a handful of values differently per SIMD path (the same OpenCV
    # gives 8 of 1.08M values off by 1 on this project's x86 machines): ±1 on at most 1e-5 of the values;
    # a wrong interpolation or size moves tens of thousands.
    diff = np.abs(padded.image.astype(int) - golden["s1.padded_rgb_uint8"].astype(int))
    assert diff.max() <= 1 and (diff > 0).sum() <= 1e-5 * diff.size, (diff > 0).sum()
    assert [padded.width, padded.height] == golden_meta["output_size_wh"]


@pytest.mark.parametrize(
    ("hw", "expected"), [((259, 194), (684, 512)), ((301, 227), (679, 512)), ((512, 512), (512, 512))]
)
def test_output_size_rule_short_side_512_no_rounding(hw, expected):
    assert preprocess.output_size(*hw) == expected


def test_s2_letterbox(golden):
    det_input, ratio = preprocess.letterbox(golden["s1.padded_rgb_uint8"])
    assert det_input.dtype == np.float32
    np.testing.assert_array_equal(det_input, golden["s2.det_input_as_uint8"][0].astype(np.float32))
    assert ratio == pytest.approx(float(golden["s2.ratio"][0]), abs=1e-7)


def test_s2_standin_detector_output(golden, dw_dir):
    model = OnnxModel(dw_dir / "tiny_standin_yolox_l.onnx")  # the runtime the pipeline serves with
    out = model(golden["s2.det_input_as_uint8"].astype(np.float32))
    np.testing.assert_allclose(out[0], golden["s2.det_raw_output"], atol=1e-4)


def test_s3_person_boxes(golden, golden_meta):
    boxes = detector.person_boxes(golden["s2.det_raw_output"][0], golden_meta["ratio"])
    np.testing.assert_array_equal(boxes.astype(np.float32), golden["s3.person_boxes_xyxy"])  # bit-exact
    np.testing.assert_allclose(boxes, golden_meta["boxes"], atol=1e-4)


def test_s3_decoding_a_class_subset_equals_the_full_decode(golden, golden_meta):
    raw = golden["s2.det_raw_output"][0]
    boxes_all, scores_all = detector.decode(raw, golden_meta["ratio"])
    boxes_person, scores_person = detector.decode(raw, golden_meta["ratio"], slice(0, 1))
    assert scores_all.shape == (8400, 80)
    np.testing.assert_array_equal(boxes_all, boxes_person)
    np.testing.assert_array_equal(scores_all[:, :1], scores_person)


def test_s3_nms_keeps_best_of_overlapping_and_disjoint_boxes():
    boxes = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [200, 200, 300, 300]], dtype=np.float32)
    scores = np.array([0.8, 0.9, 0.5], dtype=np.float32)
    assert detector.nms(boxes, scores) == [1, 2]


def test_s3_no_confident_person_gives_no_box():
    raw = np.zeros((8400, 85), dtype=np.float32)
    raw[:, 4] = 0.9
    raw[:, 5] = 0.2  # person score 0.18: survives NMS candidates (> 0.1) but not the final 0.3
    assert detector.person_boxes(raw, 1.0).shape == (0, 4)


def test_s4_crops(golden):
    crops = [pose.crop(golden["s1.padded_rgb_uint8"], box) for box in golden["s3.person_boxes_xyxy"]]
    np.testing.assert_array_equal(np.stack([c.input for c in crops]), golden["s4.pose_input_f32"])  # bit-exact
    np.testing.assert_allclose(np.stack([c.center for c in crops]), golden["s4.centers"], atol=1e-4)
    np.testing.assert_allclose(np.stack([c.scale for c in crops]), golden["s4.scales"], atol=1e-4)


def test_s4_standin_pose_output(golden, dw_dir):
    model = OnnxModel(dw_dir / "tiny_standin_dw-ll_ucoco_384.onnx")
    simcc_x, simcc_y = model(golden["s4.pose_input_f32"])
    np.testing.assert_allclose(simcc_x, golden["s4.simcc_x"], atol=1e-4)
    np.testing.assert_allclose(simcc_y, golden["s4.simcc_y"], atol=1e-4)


def test_s5_simcc_decode_to_image(golden):
    locs, scores = pose.simcc_decode(golden["s4.simcc_x"], golden["s4.simcc_y"])
    keypoints = np.stack(
        [pose.to_image(loc, c, s) for loc, c, s in zip(locs, golden["s4.centers"], golden["s4.scales"], strict=True)]
    )
    np.testing.assert_allclose(keypoints, golden["s5.keypoints133_xy"], atol=1e-4)
    np.testing.assert_allclose(scores, golden["s5.scores133"], atol=1e-4)


def test_s5_non_positive_peak_is_located_at_minus_one():
    simcc_x = np.full((1, 2, 576), -1.0, dtype=np.float32)
    simcc_y = np.full((1, 2, 768), -1.0, dtype=np.float32)
    simcc_x[0, 1, 100], simcc_y[0, 1, 50] = 0.9, 0.7
    locs, scores = pose.simcc_decode(simcc_x, simcc_y)
    np.testing.assert_array_equal(locs[0], [[-0.5, -0.5], [50.0, 25.0]])
    np.testing.assert_allclose(scores[0], [-1.0, 0.7])


def test_s6_openpose_conversion(golden):
    openpose = pose.to_openpose(golden["s5.keypoints133_xy"].astype(np.float64), golden["s5.scores133"])
    assert openpose.shape == (1, 134, 3)
    np.testing.assert_allclose(openpose, golden["s6.openpose134_xy_score"], atol=1e-4)
    # neck = shoulder midpoint, at OpenPose index 1
    kp = golden["s5.keypoints133_xy"][0]
    np.testing.assert_allclose(openpose[0, 1, :2], (kp[5] + kp[6]) / 2, atol=1e-4)


@pytest.mark.parametrize(
    ("mode", "key"), [("body-pose", "s7.canvas_body_uint8"), ("full-pose", "s7.canvas_full_uint8")]
)
def test_s7_canvas_pixel_exact(golden, mode, key):
    padded = golden["s1.padded_rgb_uint8"]
    poses = pose.poses_from_openpose(golden["s6.openpose134_xy_score"].astype(np.float64))
    canvas = draw.render(poses, padded.shape[0], padded.shape[1], mode)
    height, width = golden[key].shape[:2]
    np.testing.assert_array_equal(canvas[:height, :width], golden[key])


def test_s7_other_modes_draw_only_their_parts(golden):
    padded = golden["s1.padded_rgb_uint8"]
    poses = pose.poses_from_openpose(golden["s6.openpose134_xy_score"].astype(np.float64))
    h, w = padded.shape[:2]
    canvases = {mode: draw.render(poses, h, w, mode) for mode in draw.DRAW_MODES}
    drawn = {mode: canvas.any(axis=2) for mode, canvas in canvases.items()}
    for mode in ("body-pose", "face-pose", "hand-pose"):
        assert drawn[mode].any(), mode
    np.testing.assert_array_equal(drawn["full-pose"], drawn["body-pose"] | drawn["face-pose"] | drawn["hand-pose"])
    face_colors = np.unique(canvases["face-pose"].reshape(-1, 3), axis=0)
    np.testing.assert_array_equal(face_colors, [[0, 0, 0], [255, 255, 255]])
    face_mask, hand_mask, both = canvases["face-mask"], canvases["hand-mask"], canvases["face-hand-mask"]
    for mask in (face_mask, hand_mask):
        assert set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(both, np.maximum(face_mask, hand_mask))
    # the hulls cover every visible face / hand point
    (person,) = poses
    for mask, points in ((face_mask, person.face[:68]), (hand_mask, person.left_hand + person.right_hand)):
        visible = [(int(x), int(y)) for x, y in filter(None, points)]
        assert visible
        assert all(mask[y, x, 0] == 255 for x, y in visible)
