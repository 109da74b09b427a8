"""One-time conversions of downloaded checkpoints to safetensors (``fal-onprem weights convert``).

A manifest entry's ``convert`` field names a converter: a key of ``CONVERTERS`` or directly
``"package.module:function"``. A converter is ``fn(src: Path, dst: Path) -> None``: it reads ``src``
with a safe loader (``torch.load(weights_only=True)``, a restricted unpickler) and writes safetensors
to ``dst`` — one file, or a folder of files for converters registered with ``output="dir"``.
``dst`` is a temporary path that is renamed into place once the converter returns, so an interrupted
conversion never looks finished. Model packages own their specific converters; they are imported
lazily by name so that ``weights`` does not depend on them.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ConvertFn = Callable[[Path, Path], None]


@dataclass(frozen=True)
class Converter:
    name: str
    target: str | ConvertFn  # a function, or "module:function" imported on first use
    output: Literal["file", "dir"] = "file"
    bytes_per_param: float | None = None  # size of the output per parameter; None: same as the source

    def function(self) -> ConvertFn:
        if callable(self.target):
            return self.target
        module, _, attr = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise LookupError(f"converter {self.name!r}: cannot import {self.target} ({e})") from e


def _wrapper_unwrap(obj: Any) -> Any:
    """Checkpoints often wrap the state dict: {'state_dict': {...}} or {'model': {...}, 'epoch': ...}."""
    for key in ("state_dict", "model", "module", "params"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def _flatten_tensors(obj: Mapping, prefix: str = "") -> dict[str, Any]:
    import numpy as np
    import torch

    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, np.ndarray):
            out[name] = torch.from_numpy(value)
        elif isinstance(value, Mapping):
            out.update(_flatten_tensors(value, f"{name}."))
        # other leaves (epoch counters, author strings) are metadata, not weights
    return out


def load_torch_state_dict(src: Path) -> dict[str, Any]:
    """A flat ``{name: tensor}`` from a torch checkpoint, loaded without running pickled code."""
    import torch

    try:
        obj = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (pre-zip) serialisation cannot be memory-mapped
        obj = torch.load(src, map_location="cpu", weights_only=True)
    tensors = _flatten_tensors(_wrapper_unwrap(obj))
    if not tensors:
        raise ValueError(f"{src} holds no tensors")
    return tensors


def _unshare(tensors: dict[str, Any]) -> dict[str, Any]:
    """safetensors refuses tensors sharing memory; copy all but the first user of a storage."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in tensors.items():
        t = t.contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and ident in seen:
            t = t.clone()
        seen.add(ident)
        out[name] = t
    return out


def _save(tensors: dict[str, Any], dst: Path, source: Path) -> None:
    from safetensors.torch import save_file

    save_file(_unshare(tensors), str(dst), metadata={"format": "pt", "source": source.name})


def torch_to_safetensors(src: Path, dst: Path) -> None:
    """torch ``.pth``/``.bin``/``.pt`` state dict → one safetensors file, dtypes unchanged."""
    _save(load_torch_state_dict(src), dst, src)


def split_fp16(src: Path, dst: Path) -> None:
    """A state dict whose keys start with sub-model prefixes (Leffa: ``vae.``, ``unet.``,
    ``unet_encoder.``) → ``dst/<prefix>.safetensors`` per prefix, prefix stripped, floats in fp16.

    The source is memory-mapped and one group is materialised at a time, so a 20.9 GB fp32
    checkpoint needs about the size of its largest group in RAM.
    """
    import torch

    tensors = load_torch_state_dict(src)
    groups: dict[str, list[str]] = {}
    for name in tensors:
        prefix, dot, _ = name.partition(".")
        if not dot:
            raise ValueError(f"{src}: key {name!r} has no sub-model prefix")
        groups.setdefault(prefix, []).append(name)
    dst.mkdir(parents=True, exist_ok=True)
    for prefix, names in groups.items():
        part = {
            name[len(prefix) + 1 :]: (t.to(torch.float16) if t.is_floating_point() else t)
            for name in names
            for t in [tensors[name]]
        }
        _save(part, dst / f"{prefix}.safetensors", src)
        del part


CONVERTERS: dict[str, Converter] = {
    c.name: c
    for c in [
        Converter("torch_to_safetensors", torch_to_safetensors),
        Converter("split_fp16", split_fp16, output="dir", bytes_per_param=2),
        # model-specific converters, owned by the model packages (imported on use)
        Converter("liveportrait", "pipelines.liveportrait.networks.convert:convert"),
        Converter("densepose", "pipelines.common.densepose.convert:convert"),
        Converter("schp", "pipelines.common.parsing.convert:convert"),
    ]
}


def converter(name: str) -> Converter:
    """The converter named in a manifest (a registry key or ``module:function``)."""
    if name in CONVERTERS:
        return CONVERTERS[name]
    if ":" in name:
        return Converter(name, name)
    raise LookupError(f"unknown conversion {name!r} (known: {', '.join(sorted(CONVERTERS))})")


def run_conversion(name: str, src: Path, dst: Path) -> Path:
    """Convert ``src`` into ``dst`` atomically (temporary path, then rename). Returns ``dst``."""
    conv = converter(name)
    fn = conv.function()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    _remove(tmp)
    try:
        fn(src, tmp)
        if not tmp.exists():
            raise RuntimeError(f"converter {name!r} wrote nothing to {tmp}")
        _remove(dst)
        tmp.rename(dst)
    finally:
        _remove(tmp)
    return dst


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
