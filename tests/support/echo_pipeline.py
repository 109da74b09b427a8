"""A test-only pipeline (`test/echo`) for exercising the server without model code.

Loaded into the registry with ``FAL_ONPREM_PIPELINE_MODULES=tests.support.echo_pipeline``. It reads
its input image, waits ``steps`` x ``step_ms`` (reporting progress, so it can be cancelled while
running), and returns the image tinted by a seed-derived colour. The batch is processed as one
numpy array so batching is really exercised; ``fail`` makes an item fail (per item, by raising,
or by killing the worker process).
"""

from __future__ import annotations

import os
import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from pipelines.common.schema_types import Image, OutputFormat
from pipelines.contract import EndpointSpec, ItemError, Pipeline, Prepared, RunContext, WeightSource


class EchoInput(BaseModel):
    image_url: str = Field(description="Image to tint")
    steps: int = Field(default=1, ge=1, le=1000)
    step_ms: int = Field(default=0, ge=0, le=10_000)
    fail: Literal["none", "item", "crash", "exit"] = "none"
    seed: int | None = None
    sync_mode: bool = False
    output_format: OutputFormat = "png"


class EchoOutput(BaseModel):
    image: Image
    seed: int
    batch_size: int


class EchoPipeline(Pipeline):
    endpoint_id = "test/echo"
    Input = EchoInput
    Output = EchoOutput
    max_batch = 8
    max_wait_ms = 300
    runs: int = 0  # batches run by this process (for in-process tests)

    def batch_key(self, inp: EchoInput) -> tuple[int, int]:
        return (inp.steps, inp.step_ms)

    @classmethod
    def load(cls, source: WeightSource, device: str = "cpu", dtype: str = "float32") -> EchoPipeline:
        return cls()

    def run(self, batch: list[Prepared], ctx: RunContext) -> list[BaseModel | ItemError]:
        EchoPipeline.runs += 1
        first: EchoInput = batch[0].input  # type: ignore[assignment]
        for step in range(first.steps):
            if first.step_ms:  # a zero-length step yields the CPU no more than a real no-op would
                time.sleep(first.step_ms / 1000)
            ctx.progress(step + 1, first.steps)
        if any(p.input.fail == "exit" for p in batch):  # type: ignore[attr-defined]
            os._exit(17)  # simulates a worker killed mid-batch (OOM, segfault)
        if any(p.input.fail == "crash" for p in batch):  # type: ignore[attr-defined]
            raise RuntimeError("echo pipeline crashed on purpose")
        size = (64, 64)
        stack = np.stack([np.asarray(p.images["image_url"].resize(size), dtype=np.int16) for p in batch])
        tints = np.array(
            [np.random.default_rng(ctx.seed(i)).integers(0, 64, 3) for i in range(len(batch))], dtype=np.int16
        )
        out = np.clip(stack + tints[:, None, None, :], 0, 255).astype(np.uint8)
        results: list[BaseModel | ItemError] = []
        for i, prep in enumerate(batch):
            inp: EchoInput = prep.input  # type: ignore[assignment]
            if inp.fail == "item":
                results.append(ItemError.invalid_input(["image_url"], "echo refused this image", "echo_refused"))
                continue
            ctx.log(f"tinted item {i}", i)
            image = ctx.save_image(i, out[i], inp.output_format)
            results.append(EchoOutput(image=Image(**image), seed=ctx.seed(i), batch_size=len(batch)))
        return results


ENDPOINT = EndpointSpec(
    endpoint_id="test/echo",
    input_model=EchoInput,
    output_model=EchoOutput,
    pipeline="tests.support.echo_pipeline:EchoPipeline",
    title="Test-only echo pipeline",
)
