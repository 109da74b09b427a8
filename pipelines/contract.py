"""The contract between the worker and every pipeline (ARCHITECTURE.md §4).

Nothing here imports a model library: the API process imports this module (through the
registry and the schemas) and must stay free of torch/onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel

WeightKind = Literal["real", "tiny", "random_full"]
Dtype = Literal["float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class WeightSource:
    """Where a pipeline's tensors come from. The same code path runs for all three kinds.

    - ``real``: files from ``weights_dir`` (or the Hugging Face cache), listed in the manifest.
    - ``tiny``: small config, seeded random weights (tests, CI, ``--tiny`` demos).
    - ``random_full``: the real config with seeded random weights (GPU benchmarks).
    """

    kind: WeightKind
    seed: int = 0
    weights_dir: Path | None = None

    @classmethod
    def real(cls, weights_dir: Path | str | None = None) -> WeightSource:
        return cls("real", 0, Path(weights_dir) if weights_dir else None)

    @classmethod
    def tiny(cls, seed: int = 0) -> WeightSource:
        return cls("tiny", seed)

    @classmethod
    def random_full(cls, seed: int = 0) -> WeightSource:
        return cls("random_full", seed)


class ItemError(Exception):
    """A failure of one item of a batch; the other items of the batch are unaffected.

    ``detail`` is either a string (infrastructure-style error, sent with ``error_type``) or a
    fal validation list ``[{"loc": [...], "msg": ..., "type": ...}]`` (sent with status 422).
    """

    def __init__(self, status_code: int, detail: str | list[dict[str, Any]], error_type: str) -> None:
        super().__init__(detail if isinstance(detail, str) else str(detail))
        self.status_code = status_code
        self.detail = detail
        self.error_type = error_type

    @classmethod
    def invalid_input(cls, loc: list[str | int], msg: str, type_: str = "value_error") -> ItemError:
        """A 422 about one input field, in fal's validation-list shape."""
        return cls(422, [{"loc": ["body", *loc], "msg": msg, "type": type_}], "validation_error")

    def to_dict(self) -> dict[str, Any]:
        return {"status_code": self.status_code, "detail": self.detail, "error_type": self.error_type}


class BatchCancelled(Exception):
    """Raised by ``RunContext.progress`` when every item of the running batch was cancelled."""


ImageLoader = Callable[[str, list[str | int]], Any]
"""``loader(url, loc) -> PIL.Image.Image`` (RGB, EXIF orientation applied). Raises ItemError(422)
naming ``loc`` when the URL cannot be fetched or decoded. Provided by the worker (SSRF-guarded
HTTP, ``data:`` URIs, the server's own ``/files/``)."""


@dataclass
class Prepared:
    """A validated input with its images fetched and decoded, plus pipeline-specific CPU work.

    ``images`` maps the dotted field path (``"image_url"``, ``"reference_images.0.image_url"``)
    to the decoded PIL image. ``extra`` is free for a pipeline's own ``prepare`` step.
    """

    input: BaseModel
    images: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    key: int = 0
    """The item's id for ``RunContext`` calls: its position in a ``run`` batch; for stepwise pipelines a
    number the worker gives each job, unique for as long as the worker lives."""


class RunContext(Protocol):
    """What a running batch may ask of the worker. Items are addressed by ``Prepared.key``."""

    def log(self, message: str, item: int | None = None, level: str = "INFO") -> None:
        """Append a log line to one item (or to every item when ``item`` is None)."""

    def progress(self, step: int, total: int, item: int | None = None) -> None:
        """Report a step boundary (of one item, or of the whole batch when ``item`` is None); raises
        BatchCancelled when all items were cancelled (never for a single ``item``: the worker drops it)."""

    def is_cancelled(self, item: int) -> bool:
        """True once the client cancelled this item; the pipeline may drop it from the batch."""

    def seed(self, item: int) -> int:
        """The item's seed: the request's ``seed`` if given, else a random one chosen for it."""

    def save_image(self, item: int, image: Any, output_format: str = "png") -> dict[str, Any]:
        """Store a PIL image / HxWx3 uint8 array; returns a fal ``Image`` dict (data URI in sync_mode)."""


def image_url_fields(inp: BaseModel) -> Iterator[tuple[list[str | int], str]]:
    """Yield ``(loc, url)`` for every field named ``*image_url`` anywhere in the input."""

    def walk(value: Any, loc: list[str | int]) -> Iterator[tuple[list[str | int], str]]:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                sub = getattr(value, name)
                if name.endswith("image_url") and isinstance(sub, str):
                    yield [*loc, name], sub
                else:
                    yield from walk(sub, [*loc, name])
        elif isinstance(value, list):
            for i, sub in enumerate(value):
                yield from walk(sub, [*loc, i])

    yield from walk(inp, [])


class Pipeline:
    """Base class of every endpoint's pipeline. Subclasses read top to bottom as their algorithm."""

    endpoint_id: ClassVar[str]
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    max_batch: ClassVar[int] = 1
    max_wait_ms: ClassVar[int] = 0
    gpu_dtype: ClassVar[Dtype] = "float32"
    """The dtype the worker loads the pipeline in on a CUDA device unless configured otherwise (CPU: float32)."""
    weights_manifest: ClassVar[str | None] = None  # weights/manifests/<name>.json: sizes for the memory budget

    def batch_key(self, inp: BaseModel) -> Hashable:
        """Jobs with equal keys may share one batch. Default: all jobs of the endpoint."""
        return ()

    @classmethod
    def load(cls, source: WeightSource, device: str = "cpu", dtype: Dtype = "float32") -> Pipeline:
        raise NotImplementedError

    def prepare(self, inp: BaseModel, load_image: ImageLoader) -> Prepared:
        """CPU-side work done on a worker thread while the previous batch runs."""
        prepared = Prepared(input=inp)
        for loc, url in image_url_fields(inp):
            prepared.images[".".join(map(str, loc))] = load_image(url, loc)
        return prepared

    def run(self, batch: list[Prepared], ctx: RunContext) -> list[BaseModel | ItemError]:
        raise NotImplementedError

    # -- memory budget (ARCHITECTURE.md §4.2); the worker uses these to load, evict and admit
    def resident_bytes(self) -> int:
        """Device memory the loaded pipeline holds (weights, caches); 0 when unknown."""
        return 0

    def row_bytes(self, inp: BaseModel) -> int:
        """Peak activation memory one batch row of this input adds while it runs; 0 when unknown."""
        return 0

    @classmethod
    def expected_resident_bytes(cls, source: WeightSource, dtype: Dtype = "float32") -> int:
        """``resident_bytes`` before loading, so the worker can make room first (or leave the pipeline on
        standby at start): the manifest's sizes at ``dtype`` for the real shapes (``real``, ``random_full``);
        0 when unknown (``tiny``, no manifest): the worker then measures after loading."""
        if cls.weights_manifest is None or source.kind == "tiny":
            return 0
        from weights.summary import resident_bytes

        return resident_bytes(cls.weights_manifest, 4 if dtype == "float32" else 2)

    def move_to(self, device: str) -> None:
        """Move the weights to ``device`` ("cpu" when evicted, the worker's device when needed again).
        Raise NotImplementedError when the pipeline cannot: the worker then unloads it instead."""
        raise NotImplementedError


Result = BaseModel | ItemError
State = Any
"""A stepwise pipeline's running batch: opaque to the worker (tensors, per-row scheduler positions...)."""


class StepwisePipeline(Pipeline):
    """A diffusion pipeline that the worker drives one denoising step at a time (ARCHITECTURE.md §4.1).

    Items are addressed by ``Prepared.key``. Between two ``step`` calls (a step boundary) the worker may
    retire finished items (``finish``), remove cancelled ones (``drop``) and admit new ones
    (``begin`` + ``merge``). A row's result must not depend on which other rows shared its steps: every
    row keeps its own generator, timestep index, guidance and scheduler state.
    """

    def step_key(self, inp: BaseModel) -> Hashable:
        """Items with equal keys may share one network call (same shapes, same step count)."""
        return self.batch_key(inp)

    def rows(self, inp: BaseModel) -> int:
        """Batch rows one item occupies (e.g. ``num_images``; CFG doubling is inside the pipeline)."""
        return 1

    def total_steps(self, inp: BaseModel) -> int:
        """Number of ``step`` calls the item needs (for progress and admission)."""
        raise NotImplementedError

    def begin(self, items: list[Prepared], ctx: RunContext) -> State:
        """Encode conditions, seed one generator per row from ``ctx.seed(key)``, draw initial latents."""
        raise NotImplementedError

    def step(self, state: State, ctx: RunContext) -> None:
        """One network call for every row in ``state``; each row advances its own scheduler by one step.
        Reports ``ctx.progress(step, total, item=key)`` for each item it advanced."""
        raise NotImplementedError

    def done(self, state: State) -> list[int]:
        """Keys of the items whose last step has run."""
        raise NotImplementedError

    def finish(self, state: State, keys: list[int], ctx: RunContext) -> list[Result]:
        """Decode and save these items (in the order of ``keys``) and remove their rows from ``state``."""
        raise NotImplementedError

    def merge(self, state: State, other: State) -> State:
        """``other``'s rows join ``state`` (same ``step_key``) at a step boundary; returns the merged state."""
        raise NotImplementedError

    def drop(self, state: State, keys: list[int]) -> None:
        """Remove these items' rows (cancelled); the other rows are unaffected."""
        raise NotImplementedError

    def keys(self, state: State) -> list[int]:
        """Keys of every item still in ``state``."""
        raise NotImplementedError

    def run(self, batch: list[Prepared], ctx: RunContext) -> list[Result]:
        """The closed loop over the stepwise protocol, for callers without step-level scheduling (tests,
        benchmarks, a one-shot worker). Items are keyed by their position in ``batch``."""
        for i, item in enumerate(batch):
            item.key = i
        results: dict[int, Result] = {}
        state = self.begin(batch, ctx)
        while self.keys(state):
            cancelled = [k for k in self.keys(state) if ctx.is_cancelled(k)]
            if cancelled:
                self.drop(state, cancelled)
                results.update((k, ItemError(400, "Request was cancelled", "request_cancelled")) for k in cancelled)
                if not self.keys(state):
                    break
            self.step(state, ctx)
            finished = self.done(state)
            if finished:
                results.update(zip(finished, self.finish(state, finished, ctx), strict=True))
        return [results[i] for i in range(len(batch))]


@dataclass(frozen=True)
class EndpointSpec:
    """What the API process knows of an endpoint: its schema, and where its pipeline lives.

    ``pipeline`` is ``"module:Class"`` imported only in workers, or None while not yet built
    (the API then answers 503 with ``unavailable_reason``).
    """

    endpoint_id: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    pipeline: str | None
    unavailable_reason: str = ""
    title: str = ""
