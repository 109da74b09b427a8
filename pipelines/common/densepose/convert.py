"""One-time conversion of detectron2's ``model_final_162be9.pkl`` to safetensors.

The model-zoo file is a pickle (latin1) of ``{'model': OrderedDict[str, np.ndarray float32],
'__author__': str}``. It is read with a restricted unpickler that only resolves the numpy array
and dtype constructors and ``OrderedDict``; anything else in the file is refused. Names are kept
unchanged (the model uses detectron2's names), so the result loads with strict key matching.
Older detectron2 versions also saved a few buffers that today's model rebuilds from its config (RPN cell
anchors, pixel mean/std); those known names are dropped (logged), any other unknown key still fails the load.

Run by ``fal-onprem weights convert`` (converter ``densepose``), or by hand:
``python -m pipelines.common.densepose.convert model_final_162be9.pkl out.safetensors``
"""

from __future__ import annotations

import argparse
import logging
import pickle
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

log = logging.getLogger(__name__)

# Buffers that detectron2 computes from the config (non-persistent in current detectron2, absent from
# the reference manifest and from our state dict) but that model-zoo files written by older versions hold.
NON_PERSISTENT_KEYS = frozenset(
    {
        *(f"proposal_generator.anchor_generator.cell_anchors.{level}" for level in range(5)),  # P2..P6
        "pixel_mean",
        "pixel_std",
    }
)

_ALLOWED = {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 store bytes
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")
        if module == "numpy.core.multiarray":  # numpy 2 keeps it as an alias of numpy._core
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def read_model_zoo_pickle(path: Path | str) -> dict[str, np.ndarray]:
    """The ``model`` dict of a detectron2 model-zoo pickle, as contiguous float32 arrays, without the
    ``NON_PERSISTENT_KEYS``."""
    with open(path, "rb") as f:
        data = _RestrictedUnpickler(f, encoding="latin1").load()
    model = data["model"] if isinstance(data, dict) and "model" in data else data
    if not isinstance(model, dict):
        raise ValueError(f"{path}: expected a dict of arrays, got {type(model).__name__}")
    out = {}
    for key, value in model.items():
        if key in NON_PERSISTENT_KEYS:
            log.info("%s: dropping %s %s (rebuilt from the config)", Path(path).name, key, np.shape(value))
            continue
        arr = np.asarray(value)
        if arr.dtype != np.float32:
            raise ValueError(f"{path}: tensor {key} has dtype {arr.dtype}, expected float32")
        out[key] = np.ascontiguousarray(arr)
    return out


def convert_checkpoint(src: Path | str, dst: Path | str) -> Path:
    """Write the ``.pkl``'s tensors to ``dst`` (safetensors, same names). Returns ``dst``."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    convert(Path(src), tmp)
    tmp.replace(dst)
    return dst


def convert(src: Path, dst: Path) -> None:
    """The ``densepose`` converter of ``weights.convert`` (it renames ``dst`` into place itself)."""
    tensors = read_model_zoo_pickle(src)
    save_file(tensors, str(dst), metadata={"source": Path(src).name, "format": "detectron2 names"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="model_final_162be9.pkl")
    parser.add_argument("dst", type=Path, help="output .safetensors")
    args = parser.parse_args(argv)
    out = convert_checkpoint(args.src, args.dst)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
