"""Weight manifests and lookup of weight files on disk.

Each pipeline owns ``weights/manifests/<pipeline>.json``: a list of files with their Hugging Face
repo id, revision, path in the repo, size, sha256 (when known), licence and the conversion to apply.
Files are looked up in the weights dir (``<weights_dir>/<repo_id>/<path>``, converted files under
``<weights_dir>/converted/<pipeline>/``) and then in the Hugging Face cache. Nothing here downloads;
``fal-onprem weights pull`` does (see ``weights.cli``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

MANIFEST_DIR = Path(__file__).parent / "manifests"
DEFAULT_WEIGHTS_DIR = Path("weights")


@dataclass(frozen=True)
class WeightFile:
    """One file of a pipeline's manifest. ``key`` is the pipeline's own name for it."""

    key: str
    repo_id: str
    filename: str
    size: int | None = None
    sha256: str | None = None
    revision: str = "main"
    license: str = ""
    convert: str | None = None  # name of a conversion in weights.convert, or None
    pipelines: tuple[str, ...] = field(default_factory=tuple)


class MissingWeights(LookupError):
    """Some files of a pipeline are absent. The message names the command that fetches them."""

    def __init__(self, pipeline: str, missing: list[WeightFile]) -> None:
        self.pipeline = pipeline
        self.missing = missing
        self.pull_command = f"fal-onprem weights pull {pipeline}"
        names = ", ".join(f"{f.repo_id}/{f.filename}" for f in missing)
        super().__init__(f"missing weights for {pipeline}: {names}; run `{self.pull_command}`")


def weights_dir(explicit: Path | str | None = None) -> Path:
    """The weights folder: explicit value, else ``FAL_ONPREM_WEIGHTS_DIR``, else ``./weights``."""
    value = explicit or os.environ.get("FAL_ONPREM_WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR
    return Path(value)


@cache
def manifest(pipeline: str) -> tuple[WeightFile, ...]:
    """The manifest of one pipeline (``dwpose``, ``liveportrait``, ...)."""
    path = MANIFEST_DIR / f"{pipeline}.json"
    if not path.exists():
        return ()
    raw = json.loads(path.read_text())
    return tuple(
        WeightFile(**{**entry, "pipelines": tuple(entry.get("pipelines", [pipeline]))})
        for entry in raw["files"]
    )


def all_pipelines() -> list[str]:
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.json"))


def local_path(f: WeightFile, root: Path) -> Path:
    """Where ``pull`` stores a file inside the weights dir."""
    return root / f.repo_id / f.filename


def find(f: WeightFile, root: Path | None = None) -> Path | None:
    """The file on disk (weights dir first, then the Hugging Face cache), or None."""
    candidate = local_path(f, weights_dir(root))
    if candidate.is_file():
        return candidate
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    cached = try_to_load_from_cache(f.repo_id, f.filename, revision=f.revision)
    return Path(cached) if isinstance(cached, str) else None


def locate(pipeline: str, key: str, root: Path | None = None) -> Path:
    """Path of the file ``key`` of ``pipeline``; raises MissingWeights naming the pull command."""
    entries = {f.key: f for f in manifest(pipeline)}
    if key not in entries:
        raise KeyError(f"{key!r} is not in the {pipeline} weights manifest")
    path = find(entries[key], root)
    if path is None:
        raise MissingWeights(pipeline, [entries[key]])
    return path


def check(pipeline: str, root: Path | None = None) -> None:
    """Raise MissingWeights listing every absent file of the pipeline."""
    missing = [f for f in manifest(pipeline) if find(f, root) is None]
    if missing:
        raise MissingWeights(pipeline, missing)
