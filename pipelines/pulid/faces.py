"""The face models of PuLID's ID embedding, per reference image:

- insightface antelopev2 through onnxruntime: SCRFD-10G detection at 640x640 (threshold 0.5) and glintr100
  ArcFace on the 112 px ``norm_crop`` of the **largest** face: a raw 512-d feature, not normalised;
- facexlib-equivalent alignment: RetinaFace-R50 5 landmarks at the image's own size (conf 0.97, NMS 0.4),
  the face **closest to the centre**, warped onto the 512 px FFHQ template (``face_prep.align_face``);
- BiSeNet face parsing (19 classes) of the aligned face, for the whitening.

When insightface finds no face but the aligner does, ArcFace runs on the 512 crop resized to 112 (as the
original). When the aligner finds none, the reference is refused. RetinaFace and BiSeNet are our ports of
facexlib's (``face_nets``); tiny builds use seeded stand-ins with the same interfaces.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime
import torch
from insightface.app.common import Face
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from torch import nn

from pipelines.common.onnx_providers import providers_for

from . import face_prep
from .face_nets import BiSeNet, RetinaFaceR50

DET_SIZE = (640, 640)
DET_THRESH = 0.5
ALIGN_CONF = 0.97
ALIGN_NMS = 0.4
NUM_PARSING_CLASSES = 19


@dataclass
class ReferenceFace:
    """What the device part needs of one reference: its ArcFace feature and the aligned face."""

    arcface: np.ndarray  # [512] float32, raw
    aligned: np.ndarray  # 512x512x3 uint8 RGB


class Landmarker(Protocol):
    def detect(self, img_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [N,4] (x1,y1,x2,y2) and 5 landmarks [N,5,2] in image pixels."""


class ScrfdLandmarker:
    """Tiny builds: the SCRFD stand-in's box and 5 points, in place of RetinaFace."""

    def __init__(self, detector: SCRFD) -> None:
        self.detector = detector

    def detect(self, img_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, kps = self.detector.detect(np.ascontiguousarray(img_rgb[..., ::-1]), max_num=0, metric="default")
        return boxes[:, :4], (kps if kps is not None else np.zeros((0, 5, 2), np.float32))


class RetinaFaceLandmarker:
    """facexlib's RetinaFace-R50 (the original's aligner; our port in ``face_nets``), at the image's own size."""

    def __init__(self, model: RetinaFaceR50) -> None:
        self.model = model.eval()

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], device: str = "cpu") -> RetinaFaceLandmarker:
        model = RetinaFaceR50()
        model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
        return cls(model.to(device))

    def detect(self, img_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = self.model.detect(np.ascontiguousarray(img_rgb[..., ::-1]), ALIGN_CONF, ALIGN_NMS)
        return found[:, :4], found[:, 5:15].reshape(-1, 5, 2)


def bisenet(state: dict[str, torch.Tensor]) -> BiSeNet:
    """facexlib's BiSeNet (19 classes, our port); ``forward`` returns a tuple whose first item is the logits."""
    model = BiSeNet(NUM_PARSING_CLASSES)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    return model.eval()


class TinyParser(nn.Module):
    """Stand-in for BiSeNet with its interface: [B,3,H,W] normalised -> (logits [B,19,H,W],)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed + 11)
        self.conv = nn.Conv2d(3, NUM_PARSING_CLASSES, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen))
            self.conv.bias.copy_(torch.randn(NUM_PARSING_CLASSES, generator=gen))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.conv(x),)


class ReferenceFaces:
    """Detection, ArcFace and alignment of reference images (CPU-side, thread-safe: onnxruntime sessions and
    stateless calls)."""

    def __init__(self, det_path: Path, rec_path: Path, landmarker: Landmarker | None, device: str = "cpu") -> None:
        providers = providers_for(device)
        self.detector = SCRFD(str(det_path), session=onnxruntime.InferenceSession(str(det_path), providers=providers))
        self.detector.prepare(0, input_size=DET_SIZE, det_thresh=DET_THRESH)
        rec_session = onnxruntime.InferenceSession(str(rec_path), providers=providers)
        self.arcface = ArcFaceONNX(str(rec_path), session=rec_session)
        self.landmarker: Landmarker = landmarker or ScrfdLandmarker(self.detector)
        self._keepalive: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def from_bytes(cls, det: bytes, rec: bytes, device: str = "cpu") -> ReferenceFaces:
        """Tiny stand-ins (insightface wants files: written to a temporary folder kept with the object)."""
        tmp = tempfile.TemporaryDirectory(prefix="pulid-onnx-")
        det_path, rec_path = Path(tmp.name) / "scrfd_10g_bnkps.onnx", Path(tmp.name) / "glintr100.onnx"
        det_path.write_bytes(det)
        rec_path.write_bytes(rec)
        faces = cls(det_path, rec_path, None, device)
        faces._keepalive = tmp
        return faces

    def analyse(self, img_rgb: np.ndarray) -> ReferenceFace | None:
        """The reference's ArcFace feature and aligned face; None when no face can be aligned."""
        img_bgr = np.ascontiguousarray(img_rgb[..., ::-1])
        bboxes, kpss = self.detector.detect(img_bgr, max_num=0, metric="default")
        embedding = None
        if bboxes.shape[0]:
            areas = (bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1])
            largest = int(np.argmax(areas))  # the original sorts by area and takes the last: the largest
            face = Face(bbox=bboxes[largest, :4], kps=kpss[largest], det_score=bboxes[largest, 4])
            embedding = self.arcface.get(img_bgr, face)
        boxes, landmarks = self.landmarker.detect(img_rgb)
        if boxes.shape[0] == 0:
            return None
        centre = face_prep.center_face(boxes, *img_rgb.shape[:2])
        aligned = face_prep.align_face(img_rgb, landmarks[centre])
        if embedding is None:  # the original's fallback: ArcFace on the aligned crop, resized to 112
            embedding = self.arcface.get_feat(np.ascontiguousarray(aligned[..., ::-1])).reshape(-1)
        return ReferenceFace(np.asarray(embedding, dtype=np.float32).reshape(-1), aligned)


def parse_labels(parser: nn.Module, face01: torch.Tensor) -> torch.Tensor:
    """[B,3,512,512] in [0,1] -> argmax labels [B,1,512,512]."""
    return parser(face_prep.parsing_input(face01))[0].argmax(dim=1, keepdim=True)
