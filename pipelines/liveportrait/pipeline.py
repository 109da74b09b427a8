"""LivePortrait expression / head-pose editing of one portrait (``fal-ai/live-portrait/image``).

The algorithm, per request (batched over requests where it runs on the networks):

1. prepare (CPU thread): decode, limit to 1280 px, detect the largest face (SCRFD + 106 points), crop a
   face-aligned ``dsize`` square around it, resize to the 256 px network input, 203 points for the lip
   ratio, and the paste-back mask warped into the original image.
2. F extracts the appearance volume, M the source keypoints and head pose.
3. The fal knobs become expression / rotation deltas (editing.py); x_d is stitched to x_s, and the
   mouth is closed first when ``flag_lip_zero`` (LivePortrait v1.0).
4. W warps the volume from x_s to x_d, G decodes a 512 px face.
5. The face is pasted back into the original image (or returned as a ``dsize`` square).

Faces: with ``enable_safety_checker`` an image without a face is refused (422 ``face_not_detected``)
before any network runs. Without it, a crop still needs a face (upstream fails there too, with the
same message), but ``flag_do_crop=false`` edits the whole picture (resized to 256 like upstream) with
lip-zero skipped, as no landmarks exist.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import torch
from pydantic import BaseModel

import weights
from pipelines.common.image_io import ImageDecodeError, check_min_side, rgb_array
from pipelines.common.per_item import finish_all
from pipelines.common.schema_types import Image
from pipelines.contract import Dtype, ImageLoader, ItemError, Pipeline, Prepared, RunContext, WeightSource

from . import crop as cropping
from . import tiny_onnx
from .editing import (
    LIP_ZERO_THRESHOLD,
    ExpressionEdit,
    SourceMotion,
    batch_deltas,
    lip_open_ratio,
    lip_zero_delta,
    stitch,
)
from .faces import FaceAnalyzer
from .networks import LivePortraitNetworks, load_networks
from .schema import LivePortraitImageInput, LivePortraitImageOutput

SOURCE_MAX_DIM = 1280  # LivePortrait's source_max_dim / source_division
SOURCE_DIVISION = 2
FACE_MODEL_KEYS = ("det_10g", "2d106det", "landmark_203")  # keys in weights/manifests/liveportrait.json
NO_FACE_MESSAGE = "No face detected in the source image."


@dataclass
class SourcePortrait:
    """What ``prepare`` leaves in ``Prepared.extra['source']``."""

    original: np.ndarray  # HxWx3 uint8 RGB after the size limit
    network_input: np.ndarray  # 256x256x3 uint8
    m_c2o: np.ndarray | None  # crop -> original (None without crop)
    mask: np.ndarray | None  # paste-back mask in original space (None without paste-back)
    c_s_lip: float | None  # source mouth opening (None without landmarks)


class LivePortraitPipeline(Pipeline):
    endpoint_id = "fal-ai/live-portrait/image"
    Input = LivePortraitImageInput
    Output = LivePortraitImageOutput
    max_batch: ClassVar[int] = 8
    max_wait_ms: ClassVar[int] = 20
    gpu_dtype: ClassVar[Dtype] = "float16"  # the original's default (flag_use_half_precision)
    weights_manifest: ClassVar[str | None] = "liveportrait"

    def __init__(self, networks: LivePortraitNetworks, faces: FaceAnalyzer) -> None:
        self.networks = networks
        self.faces = faces
        self.mask_template = cropping.mask_template()

    def batch_key(self, inp: BaseModel) -> Hashable:
        return ()  # every request becomes a 256 px input and a 512 px output: all shapes agree

    @classmethod
    def load(cls, source: WeightSource, device: str = "cpu", dtype: Dtype = "float32") -> LivePortraitPipeline:
        networks = load_networks(source, device=device, dtype=dtype)
        if source.kind == "real":
            paths = [weights.locate("liveportrait", key, source.weights_dir) for key in FACE_MODEL_KEYS]
            faces = FaceAnalyzer(*paths, device=device)
        else:  # tiny and random_full: seeded stand-ins with the real signatures
            faces = FaceAnalyzer.from_bytes(
                tiny_onnx.scrfd_standin(source.seed),
                tiny_onnx.landmark106_standin(source.seed),
                tiny_onnx.landmark203_standin(source.seed),
                device=device,
            )
        return cls(networks, faces)

    # ---------------------------------------------------------------- prepare (CPU thread)

    def prepare(self, inp: BaseModel, load_image: ImageLoader) -> Prepared:
        assert isinstance(inp, LivePortraitImageInput)
        prepared = super().prepare(inp, load_image)
        width, height = prepared.images["image_url"].size
        scale = min(1.0, SOURCE_MAX_DIM / max(width, height))
        try:  # an elongated image would lose a whole side to the 1280 limit (an OpenCV assertion)
            check_min_side(int(width * scale), int(height * scale), f"the {SOURCE_MAX_DIM} px working copy")
        except ImageDecodeError as exc:
            raise ItemError.invalid_input(["image_url"], f"{width}x{height} image: {exc}", exc.error_type) from exc
        # keep only the limited copy (in ``extra``): the decoded original may be 40 MP, held per prefetched job
        img = cropping.resize_to_limit(rgb_array(prepared.images.pop("image_url")), SOURCE_MAX_DIM, SOURCE_DIVISION)
        faces = self.faces.detect(img)
        if not faces and (inp.enable_safety_checker or inp.flag_do_crop):
            hint = "" if inp.enable_safety_checker else " Set flag_do_crop to false to edit the whole image."
            raise ItemError.invalid_input(["image_url"], NO_FACE_MESSAGE + hint, "face_not_detected")

        lmk106 = faces[0].landmarks106 if faces else None
        c_s_lip = None
        if lmk106 is not None and inp.flag_lip_zero:
            c_s_lip = lip_open_ratio(self.faces.landmarks203(img, lmk106))

        m_c2o = mask = None
        if inp.flag_do_crop:
            assert lmk106 is not None
            crop = cropping.crop_image(img, lmk106, inp.dsize, inp.scale, inp.vx_ratio, inp.vy_ratio, inp.flag_do_rot)
            network_input = cropping.network_input(crop.image)
            m_c2o = crop.M_c2o
            if inp.flag_pasteback:
                mask = cropping.warp_mask(self.mask_template, m_c2o, inp.dsize, img.shape[:2])
        else:
            network_input = cv2.resize(img, (cropping.NETWORK_INPUT_SIZE,) * 2)  # aspect not kept, as upstream

        prepared.extra["source"] = SourcePortrait(img, network_input, m_c2o, mask, c_s_lip)
        return prepared

    # ---------------------------------------------------------------- run (device)

    @torch.inference_mode()
    def run(self, batch: list[Prepared], ctx: RunContext) -> list[BaseModel | ItemError]:
        nets = self.networks
        inputs = [p.input for p in batch]
        sources: list[SourcePortrait] = [p.extra["source"] for p in batch]
        total = 3

        # 2. source appearance and motion
        images = np.stack([s.network_input for s in sources])
        # contiguous NCHW: a permuted (channels-last) input would send F and M down NHWC kernels on GPU
        nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        i_s = nchw.to(nets.device).float().div(255).clamp(0, 1)
        f_s = nets.appearance(i_s)  # networks take float32 and autocast inside (F/W/G)
        motion = SourceMotion.from_raw(nets.motion(i_s))
        x_s = motion.source_keypoints()

        # 3. edited, stitched driving keypoints
        delta_exp, delta_rot = batch_deltas([ExpressionEdit.from_input(inp) for inp in inputs], nets.device)
        x_d, _ = motion.driving_keypoints(delta_exp, delta_rot)
        x_d = stitch(nets.stitching.stitching, x_s, x_d)
        x_d = x_d + self._lip_zero(inputs, sources, x_s)
        ctx.progress(1, total)

        # 4. warp and decode
        warped = nets.warping(f_s, kp_driving=x_d, kp_source=x_s)
        faces = nets.spade(warped["out"]).float().clamp(0, 1)
        faces_u8 = (faces.permute(0, 2, 3, 1) * 255).clamp(0, 255).to(torch.uint8).cpu().numpy()
        ctx.progress(2, total)

        # 5. paste back and encode, items concurrently (cv2 / PIL release the GIL): one failure fails that item only
        results: list[BaseModel | ItemError] = finish_all(
            list(zip(inputs, sources, faces_u8, strict=True)), lambda i, it: self._finish(i, *it, ctx), "paste-back"
        )
        ctx.progress(3, total)
        return results

    def _lip_zero(
        self, inputs: list[LivePortraitImageInput], sources: list[SourcePortrait], x_s: torch.Tensor
    ) -> torch.Tensor:
        """Per item: the lip-closing delta where asked for and the source mouth is open, else 0."""
        use = [
            inp.flag_lip_zero and src.c_s_lip is not None and src.c_s_lip >= LIP_ZERO_THRESHOLD
            for inp, src in zip(inputs, sources, strict=True)
        ]
        if not any(use):
            return torch.zeros_like(x_s)
        c_s_lip = torch.tensor([src.c_s_lip or 0.0 for src in sources], dtype=torch.float32, device=x_s.device)
        delta = lip_zero_delta(self.networks.stitching.lip, x_s, c_s_lip)
        mask = torch.tensor(use, device=x_s.device)[:, None, None]
        return torch.where(mask, delta, torch.zeros_like(delta))

    def _finish(
        self, i: int, inp: LivePortraitImageInput, src: SourcePortrait, face: np.ndarray, ctx: RunContext
    ) -> BaseModel:
        if src.m_c2o is not None and src.mask is not None:
            out = cropping.paste_back(face, src.m_c2o, inp.dsize, src.original, src.mask)
        elif inp.dsize == face.shape[0]:
            out = face
        else:  # the face crop is returned at the requested size (upstream always returns 512)
            interp = cv2.INTER_AREA if inp.dsize < face.shape[0] else cv2.INTER_CUBIC
            out = cv2.resize(face, (inp.dsize, inp.dsize), interpolation=interp)
        return LivePortraitImageOutput(image=Image(**ctx.save_image(i, out, inp.output_format)))
