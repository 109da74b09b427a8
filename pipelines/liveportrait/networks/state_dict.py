"""Normalise LivePortrait checkpoints to the key layout of our modules.

Accepted layouts, per network:
- the original ``.pth`` files of ``KwaiVGI/LivePortrait`` (plain state dicts; the stitching file is a
  dict ``{retarget_shoulder, retarget_mouth, retarget_eye}`` of DDP state dicts, keys ``module.*``);
- the flattened safetensors of ``Kijai/LivePortrait_safetensors`` (stitching keys
  ``retarget_shoulder_module.*`` ...), also what ``convert.py`` writes;
- our own layout (stitching keys ``stitching.* / lip.* / eye.*``, as in the reference fixtures).

Spectral-norm convs of the generator load from ``weight_orig/weight_u/weight_v``. A checkpoint whose
spectral norm was folded away (a plain ``<conv>.weight``, or the legacy triple ``weight_orig``,
``weight``, ``weight_u``) is turned into an equivalent triple with ``sigma == 1`` around that weight.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

STITCHING_PARTS = {"retarget_shoulder": "stitching", "retarget_mouth": "lip", "retarget_eye": "eye"}
_SPECTRAL_CONV = re.compile(r"^(G_middle_\d+|up_\d+)\.conv_(0|1|s)$")


def _strip_ddp(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


def flatten_stitching(raw: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Any stitching layout -> Kijai's flat ``retarget_shoulder_module.<key>`` layout."""
    flat: dict[str, torch.Tensor] = {}
    ours = {v: k for k, v in STITCHING_PARTS.items()}
    for key, value in raw.items():
        if isinstance(value, Mapping):  # original nested .pth
            for sub, tensor in value.items():
                flat[f"{key}_module.{_strip_ddp(sub)}"] = tensor
            continue
        assert isinstance(value, torch.Tensor), key
        head, _, rest = key.partition(".")
        if head in ours:
            head = f"{ours[head]}_module"
        elif head in STITCHING_PARTS:  # "retarget_shoulder.module.mlp..." (nested dict flattened with dots)
            head = f"{head}_module"
        flat[f"{head}.{_strip_ddp(rest)}"] = value
    return flat


def _stitching_to_ours(raw: Mapping[str, object]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in flatten_stitching(raw).items():
        head, _, rest = key.partition(".")
        part = head.removesuffix("_module")
        if part not in STITCHING_PARTS:
            raise KeyError(f"unexpected stitching checkpoint key {key!r}")
        out[f"{STITCHING_PARTS[part]}.{rest}"] = value
    return out


def _unit_sigma_pair(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) with ``u · (W v) == 1`` so that ``weight_orig / sigma == weight_orig``."""
    mat = weight.detach().flatten(1).double()
    row = int(mat.norm(dim=1).argmax())
    v = mat[row] / mat[row].norm()
    wv = mat @ v
    u = wv / wv.dot(wv)
    return u.to(weight.dtype), v.to(weight.dtype)


def _fold_spectral_norm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefixes = {k.rsplit(".", 1)[0] for k in sd if k.endswith((".weight", ".weight_orig"))}
    for prefix in sorted(p for p in prefixes if _SPECTRAL_CONV.match(p)):
        names = {s: f"{prefix}.{s}" for s in ("weight", "weight_orig", "weight_u", "weight_v")}
        has = {s for s, k in names.items() if k in sd}
        if {"weight_orig", "weight_u", "weight_v"} <= has:
            sd.pop(names["weight"], None)
            continue
        if "weight" not in has:
            continue  # leave it to the strict load to report
        weight = sd.pop(names["weight"])
        for s in ("weight_orig", "weight_u", "weight_v"):
            sd.pop(names[s], None)
        sd[names["weight_orig"]] = weight
        sd[names["weight_u"]], sd[names["weight_v"]] = _unit_sigma_pair(weight)
    return sd


def normalize_state_dict(network: str, raw: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Keys of any supported layout -> our module's keys (see module docstring).

    ``network`` is the manifest key: ``appearance_feature_extractor``, ``motion_extractor``,
    ``warping_module``, ``spade_generator`` or ``stitching_retargeting_module``.
    """
    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]  # type: ignore[assignment]
    if network == "stitching_retargeting_module":
        return _stitching_to_ours(raw)
    sd = {_strip_ddp(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if network == "spade_generator":
        sd = _fold_spectral_norm(sd)
    return sd
