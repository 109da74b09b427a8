"""Weight manifests and lookup of weight files on disk.

Each pipeline owns ``weights/manifests/<pipeline>.json``::

    {"pipeline": "leffa", "requires": ["densepose"], "gpu_note": "...",
     "files": [{"key": "pose_transfer", "repo_id": "franciszzj/Leffa", "filename": "pose_transfer.pth",
                "revision": "main", "size": null, "approx_size": 20900000000, "sha256": null,
                "license": "MIT", "convert": "split_fp16", "params": 5218604271, "dtype": "fp16"}]}

``requires`` pulls in the files of shared components (``densepose``, ``schp``) owned by other manifests.
Files are looked up in the weights dir (``<weights_dir>/<repo_id>/<path>``) and then in the Hugging Face
cache. Files with a ``convert`` step are served from their conversion under
``<weights_dir>/converted/<manifest>/<key>.safetensors`` (or a folder, for converters that split), so
nothing is unpickled at serve time. A file whose size differs from the manifest's (a truncated download) counts
as ``damaged``: never served, fetched again by ``pull``. Nothing here downloads; ``fal-onprem weights pull`` does
(``weights.download``, ``weights.cli``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

MANIFEST_DIR = Path(__file__).parent / "manifests"
MANIFEST_DIR_ENV = "FAL_ONPREM_MANIFEST_DIR"
WEIGHTS_DIR_ENV = "FAL_ONPREM_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path("weights")
CONVERTED_SUBDIR = "converted"
META_SUBDIR = ".fal-onprem"  # per-file records (sha256, etag, an accepted mismatch) inside the weights dir

_RESTRICTIVE_MARKERS = ("-nc", "non-commercial", "noncommercial", "research only", "research-only")


@dataclass(frozen=True)
class WeightFile:
    """One file of a pipeline's manifest. ``key`` is the pipeline's own name for it."""

    key: str
    repo_id: str
    filename: str
    size: int | None = None  # exact size in bytes (checked by verify); None when not known
    sha256: str | None = None
    revision: str = "main"
    license: str = ""
    convert: str | None = None  # name of a conversion in weights.convert, or "module:function"
    pipelines: tuple[str, ...] = field(default_factory=tuple)
    # optional extras (all manifests may omit them)
    url: str | None = None  # plain HTTPS source for files that are not on the Hugging Face Hub
    repo_type: str = "model"
    approx_size: int | None = None  # for disk estimates when the exact size is not known
    params: int | None = None  # parameter count (GPU-memory estimate)
    dtype: str | None = None  # dtype the pipeline keeps it in on the GPU: fp32 / fp16 / bf16 / onnx
    description: str = ""
    owner: str = ""  # the manifest the entry comes from (filled in on load)

    @property
    def display_name(self) -> str:
        return self.url or f"{self.repo_id}/{self.filename}"

    @property
    def expected_bytes(self) -> int | None:
        return self.size if self.size is not None else self.approx_size

    @property
    def license_restricted(self) -> bool:
        """True when the licence restricts use (non-commercial, research only)."""
        text = self.license.lower()
        return any(marker in text for marker in _RESTRICTIVE_MARKERS)


class MissingWeights(LookupError):
    """Some files of a pipeline are absent or not converted yet.

    ``pull_command`` is the exact command that fixes it (``pull`` downloads what is missing and
    runs the pending conversions; when only conversions are pending it is ``convert``).
    """

    def __init__(
        self,
        pipeline: str,
        missing: list[WeightFile],
        *,
        unconverted: list[WeightFile] | None = None,
        damaged: list[str] | None = None,
        root: Path | str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.missing = list(missing)
        self.unconverted = list(unconverted or [])
        self.damaged = list(damaged or [])  # size_problem() messages, each naming its file
        self.root = root
        self.pull_command = command_for(pipeline, "pull" if self.missing or self.damaged else "convert", root)
        parts = []
        if self.damaged:
            parts.append("damaged " + "; ".join(self.damaged))
        if self.missing:
            parts.append("missing " + ", ".join(f.display_name for f in self.missing))
        if self.unconverted:
            parts.append("not converted yet " + ", ".join(f.display_name for f in self.unconverted))
        super().__init__(f"weights for {pipeline}: {'; '.join(parts)}; run `{self.pull_command}`")

    def __reduce__(self) -> tuple:
        # picklable across processes (a worker reports it to the API process)
        return (_rebuild_missing, (self.pipeline, self.missing, self.unconverted, self.damaged, self.root))


def _rebuild_missing(
    pipeline: str, missing: list, unconverted: list, damaged: list, root: Path | str | None
) -> MissingWeights:
    return MissingWeights(pipeline, missing, unconverted=unconverted, damaged=damaged, root=root)


def command_for(pipeline: str, verb: str, root: Path | str | None = None) -> str:
    """``fal-onprem weights <verb> <pipeline>``, with ``--weights-dir`` when not the default one."""
    words = ["fal-onprem", "weights", verb, pipeline]
    if root is not None and Path(root).resolve() != weights_dir().resolve():
        words[3:3] = ["--weights-dir", str(root)]
    return shlex.join(words)


def weights_dir(explicit: Path | str | None = None) -> Path:
    """The weights folder: explicit value, else ``FAL_ONPREM_WEIGHTS_DIR``, else ``./weights``."""
    value = explicit or os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR
    return Path(value)


def manifest_dir() -> Path:
    """Folder of the manifests (``FAL_ONPREM_MANIFEST_DIR`` overrides it, e.g. in tests)."""
    return Path(os.environ.get(MANIFEST_DIR_ENV) or MANIFEST_DIR)


_FIELDS = {f.name for f in dataclasses.fields(WeightFile)}


class ManifestError(ValueError):
    """A manifest file that cannot be read (bad JSON, missing fields)."""


@cache
def _read_manifest(path: Path, mtime: float) -> dict:
    owner = path.stem
    try:
        raw = json.loads(path.read_text())
        files = tuple(
            WeightFile(
                **{k: v for k, v in entry.items() if k in _FIELDS and k not in ("pipelines", "owner")},
                pipelines=tuple(entry.get("pipelines", [owner])),
                owner=owner,
            )
            for entry in raw.get("files", [])
        )
    except (ValueError, TypeError, AttributeError) as e:
        raise ManifestError(f"{path}: {e}") from e
    return {**raw, "files": files}


def manifest_info(pipeline: str) -> dict:
    """The whole manifest document (``files`` as WeightFile tuples); empty when there is none."""
    path = manifest_dir() / f"{pipeline}.json"
    if not path.exists():
        return {"files": ()}
    return _read_manifest(path, path.stat().st_mtime)


def manifest(pipeline: str) -> tuple[WeightFile, ...]:
    """Every file a pipeline needs: its own manifest plus the manifests it ``requires``."""
    seen: set[str] = set()
    files: list[WeightFile] = []

    def add(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        info = manifest_info(name)
        files.extend(info["files"])
        for dep in info.get("requires", []):
            add(dep)

    add(pipeline)
    return tuple(files)


def all_pipelines() -> list[str]:
    return sorted(p.stem for p in manifest_dir().glob("*.json"))


def local_path(f: WeightFile, root: Path) -> Path:
    """Where ``pull`` stores a file inside the weights dir."""
    return root / f.repo_id / f.filename


def converted_path(f: WeightFile, root: Path | str | None = None) -> Path | None:
    """Where the conversion of ``f`` lives (a file, or a folder for splitting converters); None if none."""
    if not f.convert:
        return None
    from weights.convert import converter  # local import: keeps this module free of heavy imports

    base = weights_dir(root) / CONVERTED_SUBDIR / (f.owner or "shared")
    return base / (f.key if converter(f.convert).output == "dir" else f"{f.key}.safetensors")


def find(f: WeightFile, root: Path | None = None) -> Path | None:
    """The original file on disk (weights dir first, then the Hugging Face cache), or None."""
    candidate = local_path(f, weights_dir(root))
    if candidate.is_file():
        return candidate
    if f.url:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    cached = try_to_load_from_cache(f.repo_id, f.filename, revision=f.revision, repo_type=f.repo_type)
    return Path(cached) if isinstance(cached, str) else None


def meta_path(f: WeightFile, root: Path) -> Path:
    return root / META_SUBDIR / f.repo_id / f"{f.filename}.json"


def record(f: WeightFile, root: Path | None = None) -> dict:
    """What ``pull`` / ``import`` recorded about the file (empty when nothing was)."""
    try:
        return json.loads(meta_path(f, weights_dir(root)).read_text())
    except (OSError, ValueError):
        return {}


def size_problem(f: WeightFile, path: Path, root: Path | None = None) -> str | None:
    """None when the file has the manifest's size (or one accepted with ``import --accept-mismatch``)."""
    if f.size is None:
        return None
    actual = path.stat().st_size
    if actual == f.size:
        return None
    accepted = record(f, root)
    if accepted.get("accepted_mismatch") and accepted.get("size") == actual:
        return None
    return f"{path} is {actual} bytes, expected {f.size} (truncated or a different file)"


def find_ready(f: WeightFile, root: Path | None = None) -> Path | None:
    """The path a pipeline loads at serve time: the conversion when ``f`` has one, else the file (when
    its size is right)."""
    if not f.convert:
        path = find(f, root)
        return path if path is not None and size_problem(f, path, root) is None else None
    out = converted_path(f, root)
    return out if out is not None and out.exists() else None


def state(f: WeightFile, root: Path | None = None) -> str:
    """``ready``, ``unconverted`` (downloaded, conversion pending), ``damaged`` (wrong size) or ``missing``."""
    if find_ready(f, root) is not None:
        return "ready"
    path = find(f, root)
    if path is None:
        return "missing"
    return "damaged" if size_problem(f, path, root) else "unconverted"


def _entry(pipeline: str, key: str) -> WeightFile:
    entries = {f.key: f for f in reversed(manifest(pipeline))}  # own entries win over required ones
    if key not in entries:
        raise KeyError(f"{key!r} is not in the {pipeline} weights manifest")
    return entries[key]


def locate(pipeline: str, key: str, root: Path | None = None) -> Path:
    """Serve-time path of the file ``key`` of ``pipeline`` (its safetensors conversion when it has one).

    Raises MissingWeights naming the command that fetches or converts it.
    """
    f = _entry(pipeline, key)
    path = find_ready(f, root)
    if path is None:
        raise _missing(pipeline, [f], root) or MissingWeights(pipeline, [f], root=root)
    return path


def locate_source(pipeline: str, key: str, root: Path | None = None) -> Path:
    """Path of the original (unconverted) file ``key``; for converters, not for serving."""
    f = _entry(pipeline, key)
    path = find(f, root)
    if path is None:
        raise MissingWeights(pipeline, [f], root=root)
    return path


def missing_weights(pipeline: str, root: Path | None = None) -> MissingWeights | None:
    """The MissingWeights error the pipeline would raise, or None when all its files are ready."""
    return _missing(pipeline, manifest(pipeline), root)


def _missing(pipeline: str, files: Iterable[WeightFile], root: Path | None) -> MissingWeights | None:
    missing: list[WeightFile] = []
    unconverted: list[WeightFile] = []
    damaged: list[str] = []
    for f in files:
        s = state(f, root)
        if s == "missing":
            missing.append(f)
        elif s == "unconverted":
            unconverted.append(f)
        elif s == "damaged":
            path = find(f, root)
            assert path is not None
            damaged.append(size_problem(f, path, root) or str(path))
    if missing or unconverted or damaged:
        return MissingWeights(pipeline, missing, unconverted=unconverted, damaged=damaged, root=root)
    return None


def check(pipeline: str, root: Path | None = None) -> None:
    """Raise MissingWeights listing every absent (or unconverted) file of the pipeline."""
    error = missing_weights(pipeline, root)
    if error is not None:
        raise error


def pull_missing(pipelines: list[str] | None = None, weights_dir: Path | str | None = None) -> dict[str, str]:
    """Download and convert what the pipelines lack (``serve --pull``). Returns ``{pipeline: error}``
    for pipelines that are still not ready (empty when all are)."""
    from weights.download import pull

    return pull(pipelines or all_pipelines(), root=weights_dir, convert=True).failures
