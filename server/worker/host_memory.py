"""Host memory a prepared job holds, so the worker can bound prepared inputs in bytes (issue #11).

A count bound alone lets 64 maximum-size images (40 MP each, 120 MB decoded) sit in memory between
prepare and run. The estimate counts arrays, tensors, PIL images and the containers around them;
shared objects are counted once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import sys
from functools import cache
from typing import Any

from PIL import Image

# malloc_trim walks every arena (ms to a second on a big, fragmented heap): only after large decodes
TRIM_AFTER_DECODED_BYTES = 64 * 1024 * 1024


def held_bytes(value: Any, _seen: set[int] | None = None) -> int:
    """Bytes of the pixel / array buffers reachable from ``value`` (dicts, lists, tuples, dataclasses)."""
    seen = set() if _seen is None else _seen
    if id(value) in seen or value is None or isinstance(value, str | bytes | int | float | bool):
        return len(value) if isinstance(value, bytes) else 0
    seen.add(id(value))
    if isinstance(value, Image.Image):
        return value.width * value.height * len(value.getbands())
    nbytes = getattr(value, "nbytes", None)  # numpy arrays
    if isinstance(nbytes, int):
        return nbytes
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # torch tensors, without importing torch
        return int(value.element_size() * value.nelement())
    if isinstance(value, dict):
        return sum(held_bytes(v, seen) for v in value.values())
    if isinstance(value, list | tuple | set):
        return sum(held_bytes(v, seen) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(held_bytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    return 0


def fitting_prefix(sizes: list[int], room: int) -> int:
    """How many of ``sizes`` (in order) fit in ``room`` bytes; at least one, so a batch always progresses."""
    total, count = 0, 0
    for size in sizes:
        if count and total + size > room:
            break
        total += size
        count += 1
    return count


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    return ctypes.CDLL(name) if name else None


def release_freed_memory() -> None:
    """Give memory freed by the C allocator back to the OS (glibc ``malloc_trim``).

    Decoding a large image frees hundreds of MB in small blocks (PIL's ``tobytes`` chunks) inside the
    prepare thread's malloc arena; glibc keeps them, so without this a worker's RSS grows by that much per
    prepare thread and never shrinks. A no-op where there is no glibc.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
