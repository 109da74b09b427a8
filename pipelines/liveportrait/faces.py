"""Face detection and landmarks for cropping: insightface's SCRFD (buffalo_l ``det_10g``) and 106-point
landmarker (``2d106det``), plus LivePortrait's 203-point ``landmark.onnx``, all through onnxruntime.

As LivePortrait's cropper: detection at 512x512 with threshold 0.5, faces sorted by box area (largest
first), 106 points of the largest face to place the crop, 203 points (from a 224 crop at scale 1.5,
vy -0.1 around the 106 points) for the eye / lip opening ratios.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
from insightface.app.common import Face
from insightface.model_zoo.landmark import Landmark
from insightface.model_zoo.scrfd import SCRFD

from pipelines.common.onnx_providers import Provider, providers_for

from .crop import crop_image, transform_points

DET_SIZE = (512, 512)
DET_THRESH = 0.5
LANDMARK203_SIZE = 224


@dataclass(frozen=True)
class DetectedFace:
    bbox: np.ndarray  # x1, y1, x2, y2
    score: float
    landmarks106: np.ndarray  # [106,2] in image pixels

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))


class FaceAnalyzer:
    """The three face models. Thread-safe for concurrent ``detect`` / ``landmarks203`` calls."""

    def __init__(self, det_path: Path, lmk106_path: Path, lmk203_path: Path, device: str = "cpu") -> None:
        providers = providers_for(device)
        self.detector = SCRFD(str(det_path), session=self._session(det_path, providers))
        self.detector.prepare(0, input_size=DET_SIZE, det_thresh=DET_THRESH)
        self.landmarker106 = Landmark(str(lmk106_path), session=self._session(lmk106_path, providers))
        self.landmarker203 = self._session(lmk203_path, providers)
        self._lmk203_input = self.landmarker203.get_inputs()[0].name
        self._keepalive: tempfile.TemporaryDirectory[str] | None = None

    @staticmethod
    def _session(path: Path, providers: list[Provider]) -> onnxruntime.InferenceSession:
        return onnxruntime.InferenceSession(str(path), providers=providers)

    @classmethod
    def from_bytes(cls, det: bytes, lmk106: bytes, lmk203: bytes, device: str = "cpu") -> FaceAnalyzer:
        """Build from serialized models (the tiny stand-ins); insightface wants files, so write them."""
        tmp = tempfile.TemporaryDirectory(prefix="liveportrait-onnx-")
        paths = []
        for name, data in (("det_10g.onnx", det), ("2d106det.onnx", lmk106), ("landmark.onnx", lmk203)):
            path = Path(tmp.name) / name
            path.write_bytes(data)
            paths.append(path)
        analyzer = cls(*paths, device=device)
        analyzer._keepalive = tmp
        return analyzer

    def detect(self, img_rgb: np.ndarray) -> list[DetectedFace]:
        """All faces with their 106 landmarks, largest box first."""
        img_bgr = np.ascontiguousarray(img_rgb[..., ::-1])
        bboxes, kpss = self.detector.detect(img_bgr, max_num=0, metric="default")
        faces = []
        for i in range(bboxes.shape[0]):
            face = Face(bbox=bboxes[i, :4], kps=None if kpss is None else kpss[i], det_score=bboxes[i, 4])
            lmk = self.landmarker106.get(img_bgr, face)
            faces.append(DetectedFace(bbox=bboxes[i, :4].copy(), score=float(bboxes[i, 4]), landmarks106=lmk))
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def landmarks203(self, img_rgb: np.ndarray, landmarks106: np.ndarray) -> np.ndarray:
        """LivePortrait's 203 points in image pixels, from a 224 crop around the 106 points."""
        crop = crop_image(img_rgb, landmarks106, dsize=LANDMARK203_SIZE, scale=1.5, vy_ratio=-0.1)
        inp = (crop.image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        out = self.landmarker203.run(None, {self._lmk203_input: inp})[2]
        pts = out[0].reshape(-1, 2) * LANDMARK203_SIZE
        return transform_points(pts, crop.M_c2o)
