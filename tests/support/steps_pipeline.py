"""A test-only stepwise pipeline (`test/steps`): a synthetic "diffusion" loop for the step scheduler.

Loaded with ``FAL_ONPREM_PIPELINE_MODULES=tests.support.steps_pipeline``. Each row holds a latent drawn
from its item's seed; every ``step`` advances all rows at once with only exact float operations
(multiply, add, modulo), each row at its own step index, so a row's result depends only on its seed
and step count, never on which rows shared its steps. ``finish`` turns the latents into images.

Tests drive it deterministically through class attributes: ``step_log`` (the seeds of the rows of every
step call, appended when the step starts) and ``gate`` (a semaphore each step then acquires, so a test
releases steps one by one).
``step_ms`` sleeps in each step (for live servers and benchmarks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, Field

from pipelines.common.schema_types import Image, ImageSize, ImageSizePreset, OutputFormat, resolve_image_size
from pipelines.contract import EndpointSpec, Prepared, Result, RunContext, StepwisePipeline, WeightSource


class StepsInput(BaseModel):
    num_inference_steps: int = Field(default=4, ge=1)
    image_size: ImageSize | ImageSizePreset = Field(default=ImageSize(width=8, height=8))
    num_images: int = Field(default=1, ge=1, le=4)
    step_ms: int = Field(default=0, ge=0, le=10_000)
    seed: int | None = None
    sync_mode: bool = False
    output_format: OutputFormat = "png"


class StepsOutput(BaseModel):
    images: list[Image]
    seed: int


@dataclass
class _Item:
    seed: int
    latents: np.ndarray  # (num_images, h, w, 3) float64 in [0, 1)
    total: int
    step: int = 0
    step_ms: int = 0


@dataclass
class StepsState:
    items: dict[int, _Item] = field(default_factory=dict)


class StepsPipeline(StepwisePipeline):
    endpoint_id = "test/steps"
    Input = StepsInput
    Output = StepsOutput
    max_batch = 8  # rows
    max_wait_ms = 0

    RESIDENT_BYTES: ClassVar[int] = 1_000_000
    gate: ClassVar[threading.Semaphore | None] = None
    step_log: ClassVar[list[list[int]]] = []
    loads: ClassVar[int] = 0

    @classmethod
    def load(cls, source: WeightSource, device: str = "cpu", dtype: str = "float32") -> StepsPipeline:
        StepsPipeline.loads += 1
        return cls()

    # -- memory budget
    def resident_bytes(self) -> int:
        return self.RESIDENT_BYTES

    def row_bytes(self, inp: BaseModel) -> int:
        w, h = resolve_image_size(inp.image_size)  # type: ignore[attr-defined]
        return w * h * 3 * 8

    # -- stepwise protocol
    def step_key(self, inp: BaseModel) -> Hashable:
        return resolve_image_size(inp.image_size)  # type: ignore[attr-defined]

    def rows(self, inp: BaseModel) -> int:
        return inp.num_images  # type: ignore[attr-defined]

    def total_steps(self, inp: BaseModel) -> int:
        return inp.num_inference_steps  # type: ignore[attr-defined]

    def begin(self, items: list[Prepared], ctx: RunContext) -> StepsState:
        state = StepsState()
        for prep in items:
            inp: StepsInput = prep.input  # type: ignore[assignment]
            w, h = resolve_image_size(inp.image_size)
            seed = ctx.seed(prep.key)
            latents = np.random.default_rng(seed).random((inp.num_images, h, w, 3))
            state.items[prep.key] = _Item(seed, latents, inp.num_inference_steps, step_ms=inp.step_ms)
        return state

    def step(self, state: StepsState, ctx: RunContext) -> None:
        keys = list(state.items)
        items = [state.items[k] for k in keys]
        StepsPipeline.step_log.append(sorted(it.seed for it in items))  # logged when the step starts
        gate = type(self).gate
        if gate is not None:
            gate.acquire()
        time.sleep(max((it.step_ms for it in items), default=0) / 1000)
        # One vectorised update for every row, each row with its own step index (as a per-row timestep).
        latents = np.concatenate([it.latents for it in items])
        t = np.concatenate([np.full(len(it.latents), it.step + 1, dtype=np.float64) for it in items])
        latents = (latents * 3.25 + 0.0625 * t[:, None, None, None]) % 1.0
        start = 0
        for key, it in zip(keys, items, strict=True):
            it.latents = latents[start : start + len(it.latents)]
            start += len(it.latents)
            it.step += 1
            ctx.progress(it.step, it.total, item=key)

    def done(self, state: StepsState) -> list[int]:
        return [k for k, it in state.items.items() if it.step >= it.total]

    def finish(self, state: StepsState, keys: list[int], ctx: RunContext) -> list[Result]:
        results: list[Result] = []
        for key in keys:
            it = state.items.pop(key)
            images = [ctx.save_image(key, (lat * 255).astype(np.uint8), "png") for lat in it.latents]
            results.append(StepsOutput(images=[Image(**im) for im in images], seed=it.seed))
        return results

    def merge(self, state: StepsState, other: StepsState) -> StepsState:
        state.items.update(other.items)
        return state

    def drop(self, state: StepsState, keys: list[int]) -> None:
        for key in keys:
            state.items.pop(key, None)

    def keys(self, state: StepsState) -> list[int]:
        return list(state.items)


ENDPOINT = EndpointSpec(
    endpoint_id="test/steps",
    input_model=StepsInput,
    output_model=StepsOutput,
    pipeline="tests.support.steps_pipeline:StepsPipeline",
    title="Test-only synthetic stepwise pipeline",
)
