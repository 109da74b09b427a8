"""Batched DensePose inference and the two consumer products (CatVTON part map, Leffa IUV).

``DensePose.predict`` is detectron2's ``DefaultPredictor`` for a list of images: resize, normalise,
run, rescale the boxes to each original image. Images whose padded network inputs have the same
shape run as one batch; different shapes run as separate batches, because extra zero padding
would change the border features and an image's result must not depend on its batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from pipelines.common.tensors import configure_precision
from pipelines.contract import Dtype, WeightSource

from .config import CATVTON_SCORE_THRESH, LEFFA_SCORE_THRESH
from .densepose_head import ChartOutput
from .detector import Detections
from .loading import build_model
from .model import DensePoseRCNN
from .preprocess import padded_shape, postprocess_boxes, resize_for_network, to_network_input
from .products import catvton_part_map, leffa_iuv, resample_to_box


@dataclass
class DensePoseResult:
    """Instances of one image in its original frame, sorted by score (instance 0 = top person)."""

    image_hw: tuple[int, int]
    boxes: torch.Tensor  # (K, 4) XYXY float32, original-image pixels, clipped
    scores: torch.Tensor  # (K,)
    chart: ChartOutput | None  # K predictor outputs (112×112), None when K == 0

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def labels_uv(self, i: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance ``i`` resampled to its int box: labels (h, w) in 0..24 and raw U/V (2, h, w)."""
        assert self.chart is not None
        return resample_to_box(self.chart[i : i + 1], self.boxes[i])


class DensePose:
    """DensePose R-50-FPN with detectron2's behaviour; ``model`` keeps the checkpoint's names."""

    def __init__(self, model: DensePoseRCNN) -> None:
        self.model = model

    @classmethod
    def load(cls, source: WeightSource, device: str = "cpu", dtype: Dtype = "float32") -> DensePose:
        configure_precision(device, dtype)
        return cls(build_model(source, device, dtype))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def predict(
        self,
        images: list[np.ndarray],
        score_thresh: float,
        given_boxes: list[np.ndarray | torch.Tensor] | None = None,
        max_instances: int | None = None,
    ) -> list[DensePoseResult]:
        """HxWx3 uint8 arrays **in the order the network treats as BGR** -> one result per image.

        ``max_instances`` limits the DensePose branch to the top-k instances (after detectron2's
        postprocess filter). The consumers only use instance 0, and each instance's output depends only on
        its own box, so ``max_instances=1`` gives the same instance 0 for a fraction of the head's cost.
        ``given_boxes`` (optional, per image, XYXY in the *network-input* frame, best first) skips
        the detector, like detectron2's ``detected_instances``; used to test the DensePose branch.
        """
        short = self.model.cfg.min_size_test
        resized = [resize_for_network(np.ascontiguousarray(im), short) for im in images]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, r in enumerate(resized):
            groups[padded_shape(*r.shape[:2])].append(i)
        results: list[DensePoseResult | None] = [None] * len(images)
        for indices in groups.values():
            for i, result in zip(
                indices,
                self._predict_group(images, resized, indices, score_thresh, given_boxes, max_instances),
                strict=True,
            ):
                results[i] = result
        return results  # type: ignore[return-value]

    def _predict_group(
        self,
        images: list[np.ndarray],
        resized: list[np.ndarray],
        indices: list[int],
        score_thresh: float,
        given_boxes: list[np.ndarray | torch.Tensor] | None,
        max_instances: int | None,
    ) -> list[DensePoseResult]:
        """Images with equal padded shapes, as one batch."""
        model = self.model
        batch = to_network_input([resized[i] for i in indices], self.device, self.dtype)
        sizes = [tuple(resized[i].shape[:2]) for i in indices]
        features = model.features(batch)
        if given_boxes is None:
            detections = model.detect(features, model.propose(features, sizes), sizes, score_thresh)
        else:
            detections = []
            for i in indices:
                b = torch.as_tensor(given_boxes[i], dtype=torch.float32, device=self.device).reshape(-1, 4)
                detections.append(Detections(b, torch.ones(len(b), device=self.device)))
        # detector_postprocess: to each original image, clipped, empty boxes dropped; then top-k.
        selected = []
        for i, det, size in zip(indices, detections, sizes, strict=True):
            out_hw = tuple(images[i].shape[:2])
            boxes, keep = postprocess_boxes(det.boxes, size, out_hw)
            kept = torch.nonzero(keep, as_tuple=True)[0][:max_instances]
            selected.append((out_hw, boxes[: len(kept)], det.scores[kept], det.boxes[kept]))
        chart = None
        if any(len(s[3]) for s in selected):
            chart = model.chart(model.decode(features), [s[3] for s in selected])
        results, start = [], 0
        for out_hw, boxes, scores, input_boxes in selected:
            n = len(input_boxes)
            part = chart[start : start + n] if chart is not None and n else None
            start += n
            results.append(DensePoseResult(out_hw, boxes, scores, part))
        return results

    # -- CatVTON: model/DensePose/__init__.py, called by the AutoMasker with resize=1024 --

    def catvton_part_maps(
        self, images: list[Image.Image], resize: int = 1024, given_boxes: list[np.ndarray] | None = None
    ) -> list[Image.Image]:
        """The AutoMasker's DensePose map per person image: L image, labels 0..24, same size as the input.

        As the original: RGB -> BGR (its PNG round trip), cv2 INTER_LINEAR downscale when the longest side
        exceeds ``resize``, score threshold 0.8, instance 0 pasted at its int box, any failure (no person)
        -> an all-zero map, and a NEAREST resize back to the input size. ``given_boxes``: see ``predict``.
        """
        arrays = [catvton_network_input(image, resize) for image in images]
        results = self.predict(arrays, CATVTON_SCORE_THRESH, given_boxes, max_instances=1)
        return [catvton_map_from_result(r, image.size) for r, image in zip(results, images, strict=True)]

    # -- Leffa: leffa_utils/densepose_predictor.py predict_iuv + app.py --

    def leffa_iuv(
        self, images_rgb: list[np.ndarray], given_boxes: list[np.ndarray] | None = None
    ) -> list[np.ndarray | None]:
        """Leffa's DensePose condition for each HxWx3 uint8 **RGB** image: (H, W, 3) uint8 (U, V, I).

        The RGB array goes into the BGR network unflipped (Leffa's quirk), threshold 0.5, instance 0.
        ``None`` where nobody is detected (the original raises; callers should fail that item).
        """
        results = self.predict(images_rgb, LEFFA_SCORE_THRESH, given_boxes, max_instances=1)
        return [leffa_iuv_from_result(r) for r in results]


def catvton_network_input(image: Image.Image, resize: int = 1024) -> np.ndarray:
    """CatVTON's predictor input: BGR uint8 (its PNG round trip), cv2-downscaled if longer than ``resize``."""
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    h, w = bgr.shape[:2]
    if max(bgr.shape) > resize:
        scale = resize / max(bgr.shape)
        bgr = cv2.resize(bgr, (int(w * scale), int(h * scale)))
    return np.ascontiguousarray(bgr)


def catvton_map_from_result(result: DensePoseResult, size: tuple[int, int]) -> Image.Image:
    """Instance 0's labels on a zero map of the network-input size, NEAREST-resized to ``size`` (W, H).

    Any failure (nobody detected, a box too thin to paste) gives an all-zero map, as in the original.
    """
    try:
        if not len(result):
            raise IndexError("no person detected")
        labels, _ = result.labels_uv(0)
        part_map = Image.fromarray(catvton_part_map(labels, result.boxes[0], result.image_hw))
    except (IndexError, ValueError):
        part_map = Image.new("L", (1, 1))
    return part_map.resize(size, Image.Resampling.NEAREST)


def leffa_iuv_from_result(result: DensePoseResult) -> np.ndarray | None:
    """Instance 0 as Leffa's (H, W, 3) uint8 (U, V, I) image; None when nobody was detected.

    None also for a box thinner than one pixel, where the original's paste fails.
    """
    if not len(result):
        return None
    labels, uv = result.labels_uv(0)
    try:
        return leffa_iuv(labels, uv, result.boxes[0], result.image_hw)
    except ValueError:
        return None
