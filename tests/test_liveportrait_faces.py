"""The tiny face-model stand-ins: real I/O signatures, parsed by insightface, and they find a face."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import skimage.data

from pipelines.liveportrait import tiny_onnx
from pipelines.liveportrait.faces import FaceAnalyzer


def signature(model: bytes) -> tuple[list, list]:
    sess = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return [(i.name, i.shape) for i in sess.get_inputs()], [(o.name, o.shape) for o in sess.get_outputs()]


def test_standins_have_the_real_signatures():
    inputs, outputs = signature(tiny_onnx.scrfd_standin(0))
    assert [(n, s[:2]) for n, s in inputs] == [("input.1", [1, 3])]
    assert [n for n, _ in outputs] == ["448", "471", "494", "451", "474", "497", "454", "477", "500"]
    assert [s[1] for _, s in outputs] == [1, 1, 1, 4, 4, 4, 10, 10, 10]
    assert signature(tiny_onnx.landmark106_standin(0)) == ([("data", [1, 3, 192, 192])], [("fc1", [1, 212])])
    inputs, outputs = signature(tiny_onnx.landmark203_standin(0))
    assert inputs == [("input", [1, 3, 224, 224])]
    assert len(outputs) == 3 and outputs[2][1] == [1, 406]


def test_standins_are_seeded():
    assert tiny_onnx.scrfd_standin(3) == tiny_onnx.scrfd_standin(3)
    assert tiny_onnx.scrfd_standin(3) != tiny_onnx.scrfd_standin(4)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer.from_bytes(
        tiny_onnx.scrfd_standin(0), tiny_onnx.landmark106_standin(0), tiny_onnx.landmark203_standin(0)
    )


def test_insightface_reads_the_standins_as_scrfd_and_106_points(analyzer):
    det = analyzer.detector
    assert (det.fmc, det.use_kps, det._num_anchors) == (3, True, 2)
    assert analyzer.landmarker106.taskname == "landmark_2d_106"


def test_one_face_on_a_photo_and_none_on_a_blank_image(analyzer):
    img = skimage.data.astronaut()
    faces = analyzer.detect(img)
    assert len(faces) == 1
    face = faces[0]
    x1, y1, x2, y2 = face.bbox
    assert 0 <= x1 < x2 <= img.shape[1] and 0 <= y1 < y2 <= img.shape[0]
    assert face.score >= 0.5
    assert face.landmarks106.shape == (106, 2)
    inside = (face.landmarks106 >= [x1, y1]) & (face.landmarks106 <= [x2, y2])
    assert inside.all(), "the 106 points of the stand-in lie in the detected box"
    lmk203 = analyzer.landmarks203(img, face.landmarks106)
    assert lmk203.shape == (203, 2) and np.isfinite(lmk203).all()

    assert analyzer.detect(np.full((300, 400, 3), 128, np.uint8)) == []
    assert analyzer.detect(np.zeros((64, 64, 3), np.uint8)) == []
