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
import json
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


_ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}  # fmt: skip


def save_streaming(tensors: Mapping[str, Any], dst: Path, *, metadata: dict[str, str], cast: Any = None) -> None:
    """Write a safetensors file one tensor at a time (``cast`` applied to each on the way).

    ``safetensors.torch.save_file`` needs every tensor, and a bytes copy of each, in memory at once;
    streaming keeps a multi-GB conversion to about one tensor of RAM over the memory-mapped source.
    The result is an ordinary safetensors file (8-byte header length, JSON header, raw data).
    """
    import torch

    def out_dtype(t: torch.Tensor) -> torch.dtype:
        return cast if cast is not None and t.is_floating_point() else t.dtype

    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        dtype = out_dtype(t)
        nbytes = t.numel() * dtype.itemsize
        header[name] = {
            "dtype": _ST_DTYPES[str(dtype).removeprefix("torch.")],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # casts are memory-bound; a thread pool per small tensor costs more than it gains
    try:
        _write(dst, raw, tensors, out_dtype)
    finally:
        torch.set_num_threads(threads)


def _write(dst: Path, header: bytes, tensors: Mapping[str, Any], out_dtype: Callable[[Any], Any]) -> None:
    import torch

    with dst.open("wb") as fh:
        fh.write(len(header).to_bytes(8, "little"))
        fh.write(header)
        for t in tensors.values():
            t = t.to(out_dtype(t)).contiguous().reshape(-1)
            if t.numel():
                fh.write(memoryview(t.view(torch.uint8).numpy()))


def torch_to_safetensors(src: Path, dst: Path) -> None:
    """torch ``.pth``/``.bin``/``.pt`` state dict → one safetensors file, dtypes unchanged."""
    save_streaming(load_torch_state_dict(src), dst, metadata={"format": "pt", "source": src.name})


def split_fp16(src: Path, dst: Path) -> None:
    """A state dict whose keys start with sub-model prefixes (Leffa: ``vae.``, ``unet.``,
    ``unet_encoder.``) → ``dst/<prefix>.safetensors`` per prefix, prefix stripped, floats in fp16.

    The source is memory-mapped and written one tensor at a time, so even the 20.9 GB fp32
    checkpoint needs little more RAM than its largest tensor (benchmarks/weights_convert_bench.py).
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
        part = {name[len(prefix) + 1 :]: tensors[name] for name in names}
        save_streaming(part, dst / f"{prefix}.safetensors", metadata={"format": "pt", "source": src.name},
                       cast=torch.float16)  # fmt: skip


CONVERTERS: dict[str, Converter] = {
    c.name: c
    for c in [
        Converter("torch_to_safetensors", torch_to_safetensors),
        Converter("split_fp16", split_fp16, output="dir", bytes_per_param=2),
        # model-specific converters, owned by the model packages (imported on use)
        Converter("liveportrait", "pipelines.liveportrait.networks.convert:convert"),
        Converter("densepose", "pipelines.common.densepose.convert:convert"),
        Converter("schp", "pipelines.common.parsing.convert:convert"),
        Converter("leffa", "pipelines.leffa.convert:convert", output="dir", bytes_per_param=2),
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
