"""fal-ai/dwpose: DWPose whole-body pose image, as fal's controlnet-aux fork draws it.

Per request: resize (short side 512) + edge pad to /64 -> letterbox 640 -> YOLOX-L person boxes ->
1.25x affine crops 288x384 -> DWPose-l SimCC -> 133 keypoints -> OpenPose-134 -> drawing on a black
canvas of the padded size -> pad removed. Output: input aspect, short side 512.

Batching: ``prepare`` does the CPU resizing on worker threads; ``run`` detects per image (all images in
one call when the detector graph has a dynamic batch axis) and sends the person crops of *all* images
of the batch through ONE pose-model call. Each item's result is the same as when it runs alone.

Weights: ``real`` = yzd-v/DWPose ``yolox_l.onnx`` + ``dw-ll_ucoco_384.onnx`` (weights/manifests/dwpose.json);
``tiny`` = small seeded graphs with the same signatures built in memory (``tiny_models``).
``random_full`` = YOLOX-L and DWPose-l rebuilt in PyTorch from their published architectures with seeded
random weights and exported to ONNX with the real signatures (``random_full.py``; the exports are within
0.05% of the real files' sizes). Random weights detect nobody, so time the models on their own too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

import weights
from pipelines.common.image_io import rgb_array
from pipelines.common.per_item import finish_all
from pipelines.contract import Dtype, ImageLoader, ItemError, Pipeline, Prepared, RunContext, WeightSource

from . import detector, draw, pose
from .preprocess import Padded, letterbox, output_size, resize_with_pad
from .runtime import OnnxModel
from .schema import DWPoseInput, DWPoseOutput
from .tiny_models import tiny_detector, tiny_pose

MAX_OUTPUT_PIXELS = 16_000_000  # 512 x 31250: aspect ratios up to about 1:61


class DWPosePipeline(Pipeline):
    endpoint_id = "fal-ai/dwpose"
    Input = DWPoseInput
    Output = DWPoseOutput
    max_batch: ClassVar[int] = 32
    max_wait_ms: ClassVar[int] = 20

    def __init__(self, det_model: OnnxModel, pose_model: OnnxModel) -> None:
        self.det_model = det_model
        self.pose_model = pose_model

    @classmethod
    def load(cls, source: WeightSource, device: str = "cpu", dtype: Dtype = "float32") -> DWPosePipeline:
        """Build both sessions once. ``dtype`` is ignored: the ONNX files are fp32."""
        if source.kind == "tiny":
            return cls.from_onnx(tiny_detector(source.seed), tiny_pose(source.seed), device)
        if source.kind == "real":
            det = weights.locate("dwpose", "yolox_l", source.weights_dir)
            est = weights.locate("dwpose", "dw-ll_ucoco_384", source.weights_dir)
            return cls.from_onnx(det, est, device)
        from . import random_full  # torch, only here

        det = random_full.cached("yolox_l", source.seed, random_full.detector_onnx)
        est = random_full.cached("dw-ll_ucoco_384", source.seed, random_full.pose_onnx)
        return cls.from_onnx(det, est, device)

    @classmethod
    def from_onnx(
        cls, det_model: str | Path | bytes, pose_model: str | Path | bytes, device: str = "cpu"
    ) -> DWPosePipeline:
        """From any pair of ONNX files / serialized models with the DWPose I/O signatures."""
        return cls(OnnxModel(det_model, device), OnnxModel(pose_model, device))

    # -- CPU side -------------------------------------------------------------------------------------

    def prepare(self, inp: BaseModel, load_image: ImageLoader) -> Prepared:
        prepared = super().prepare(inp, load_image)
        width, height = prepared.images["image_url"].size
        out_h, out_w = output_size(height, width)
        if out_h * out_w > MAX_OUTPUT_PIXELS:  # a 1:500 strip would become a 512 x 256000 canvas
            raise ItemError.invalid_input(
                ["image_url"],
                f"a {width}x{height} image gives a {out_w}x{out_h} pose image (short side 512), more than "
                f"{MAX_OUTPUT_PIXELS} pixels; use a less elongated image",
            )
        # the decoded original (up to 40 MP) is dropped: run only needs the 512 px working image
        prepared.extra.update(self.preprocess(rgb_array(prepared.images.pop("image_url"))))
        return prepared

    @staticmethod
    def preprocess(rgb: np.ndarray) -> dict[str, Any]:
        padded = resize_with_pad(rgb)
        det_input, ratio = letterbox(padded.image)
        return {"padded": padded, "det_input": det_input, "ratio": ratio}

    # -- batch ----------------------------------------------------------------------------------------

    def run(self, batch: list[Prepared], ctx: RunContext) -> list[BaseModel | ItemError]:
        for item in batch:
            if "padded" not in item.extra:  # prepare() skipped by the caller
                item.extra.update(self.preprocess(rgb_array(item.images["image_url"])))
        openpose = self.estimate([p.extra for p in batch], ctx)
        # drawing + PNG encoding per item, concurrently (cv2 / zlib release the GIL); one failure fails one item
        outputs: list[BaseModel | ItemError] = finish_all(
            list(zip(batch, openpose, strict=True)), lambda i, pair: self._draw(i, *pair, ctx), "drawing"
        )
        ctx.progress(3, 3)
        return outputs

    @staticmethod
    def _draw(i: int, item: Prepared, people: np.ndarray, ctx: RunContext) -> DWPoseOutput:
        padded: Padded = item.extra["padded"]
        ctx.log(f"{len(people)} person(s) detected", i)
        canvas = draw.render(pose.poses_from_openpose(people), *padded.image.shape[:2], mode=item.input.draw_mode)
        image = np.ascontiguousarray(canvas[: padded.height, : padded.width])
        return DWPoseOutput(image=ctx.save_image(i, image, "png"))

    def estimate(self, items: list[dict[str, Any]], ctx: RunContext | None = None) -> list[np.ndarray]:
        """OpenPose-134 keypoints ``[n_people, 134, 3]`` (padded-image pixels) for each preprocessed item."""
        raw = self.det_model(np.stack([it["det_input"] for it in items]))[0]
        boxes = [detector.person_boxes(raw[i], it["ratio"]) for i, it in enumerate(items)]
        if ctx is not None:
            ctx.progress(1, 3)
        crops = [
            pose.crop(it["padded"].image, box)
            for it, item_boxes in zip(items, boxes, strict=True)
            for box in item_boxes
        ]
        results = [np.zeros((0, 134, 3)) for _ in items]
        if crops:
            simcc_x, simcc_y = self.pose_model(np.stack([c.input for c in crops]))[:2]
            locs, scores = pose.simcc_decode(simcc_x, simcc_y)
            keypoints = np.stack([pose.to_image(loc, c.center, c.scale) for loc, c in zip(locs, crops, strict=True)])
            people = pose.to_openpose(keypoints, scores)
            ends = np.cumsum([len(b) for b in boxes])
            results = [people[end - len(b) : end] for b, end in zip(boxes, ends, strict=True)]
        if ctx is not None:
            ctx.progress(2, 3)
        return results
