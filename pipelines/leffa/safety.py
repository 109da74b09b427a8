"""``has_nsfw_concepts``: diffusers' ``StableDiffusionSafetyChecker`` (CLIP ViT-L/14 vision tower and 17 + 3
concept embeddings with thresholds) behind a ``CLIPImageProcessor``.

A flagged image is returned black (all zeros) with ``has_nsfw_concepts: true``, as diffusers' Stable Diffusion
pipelines do; fal does not document what it returns.

``tiny`` / ``random_full`` build the same classes from a config with seeded random weights. Their concept
thresholds are set so that nothing is flagged (``flag_everything=True`` gives a checker that flags every image,
for tests of the flagged path).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor

from pipelines.contract import WeightSource

from .configs import LeffaConfig

PIPELINE = "leffa"
WEIGHTS_KEY = "safety_checker"  # weights/manifests/leffa.json: safety_checker/model.safetensors
CONFIG_KEY = "safety_checker_config"
PROCESSOR_KEY = "feature_extractor"


class SafetyChecker:
    def __init__(self, model: StableDiffusionSafetyChecker, processor: CLIPImageProcessor) -> None:
        self.model = model
        self.processor = processor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def load(cls, source: WeightSource, config: LeffaConfig, device: str | torch.device, dtype: torch.dtype,
             flag_everything: bool = False) -> SafetyChecker:  # fmt: skip
        if source.kind == "real":
            from weights import locate

            root = source.weights_dir
            model = StableDiffusionSafetyChecker.from_pretrained(locate(PIPELINE, WEIGHTS_KEY, root).parent)
            processor = CLIPImageProcessor.from_pretrained(locate(PIPELINE, PROCESSOR_KEY, root).parent)
            return cls(model.to(device=device, dtype=dtype).eval(), processor)
        clip = CLIPConfig(
            vision_config=config.safety_vision,
            text_config=config.safety_text,
            projection_dim=config.safety_projection_dim,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(source.seed)
            model = StableDiffusionSafetyChecker(clip)
            model.concept_embeds.normal_()
            model.special_care_embeds.normal_()
        threshold = -2.0 if flag_everything else 2.0  # cosine similarities lie in [-1, 1]
        model.concept_embeds_weights.fill_(threshold)
        model.special_care_embeds_weights.fill_(threshold)
        size = config.safety_vision["image_size"]
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return cls(model.to(device=device, dtype=dtype).eval(), processor)

    @torch.no_grad()
    def check(self, images: list[np.ndarray]) -> list[bool]:
        """One flag per (H, W, 3) uint8 image."""
        if not images:
            return []
        pixels = self.processor(images=images, return_tensors="pt").pixel_values
        dtype = next(self.model.parameters()).dtype
        _, flags = self.model(clip_input=pixels.to(self.device, dtype), images=np.zeros((len(images), 1)))
        return [bool(f) for f in flags]
