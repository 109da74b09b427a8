"""Which precision each LivePortrait network runs in.

Weights always stay float32 (≈0.5 GB in all). On CUDA, a requested float16 / bfloat16 runs F, W and G
under ``torch.autocast`` — upstream's ``flag_use_half_precision`` path — while M (keypoints and head
pose, 11.6 GFLOP) and S (tiny MLPs) stay float32, because the keypoints drive the whole warp. On CPU
everything runs float32 whatever is asked (no speed gain there; half kernels are partial).

Measured on CPU against the reference fixtures (max |error| vs the original float32 outputs; output
magnitudes are O(0.1–1.5), images in [0, 1]; torch 2.15; reproduce with
``python -m benchmarks.liveportrait_networks_bench --device cpu --fixtures ../shared/reference --out /tmp/x.json``):

=========================  ===========  ===========  ===========  ==========================
network (fixture config)   float32      autocast f16 autocast bf16 weights cast to f16 / bf16
=========================  ===========  ===========  ===========  ==========================
F feature_3d (full size)   0 (bitwise)  5.6e-4       4.8e-3       5.6e-4 / 4.9e-3
M kp / exp (reduced)       3.6e-7       9.4e-4       1.1e-2       9.4e-4 / 1.3e-2
M yaw / pitch degrees      1.5e-5       5.7e-3 deg   3.8e-2 deg   3.7e-3 / 6.2e-2 deg
W out (reduced)            7.1e-7       4.0e-4       3.5e-3       5.5e-3 / 3.7e-2
W deformation              3.6e-7       1.3e-4       1.1e-3       7.9e-4 / 7.0e-3
G image (reduced)          3.3e-7       9.6e-4       7.8e-3       8.0e-4 / 7.8e-3
S stitching (full size)    3.0e-8       (float32)    (float32)    8.3e-5 / 6.7e-4
=========================  ===========  ===========  ===========  ==========================

So float16 autocast costs < 1e-3 everywhere (≈0.25/255 on the image); bfloat16 about 10x more
(≈2/255 on the image). Casting W's weights to half is 10x worse than autocast (the 3-D heat-maps and
sampling grids lose precision), hence autocast. GPU numbers were not measured in this session (no
device was lent); expect the same orders of magnitude with TF32 disabled for the float32 reference.
"""

from __future__ import annotations

import torch

from pipelines.common.tensors import torch_dtype

HALF_PRECISION_NETWORKS = ("appearance", "warping", "spade")


resolve_dtype = torch_dtype


def autocast_dtypes(dtype: torch.dtype, device: torch.device) -> dict[str, torch.dtype | None]:
    """``torch.autocast`` dtype per network (None: plain float32)."""
    if dtype not in (torch.float16, torch.bfloat16):
        if dtype != torch.float32:
            raise ValueError(f"unsupported dtype {dtype}")
        return dict.fromkeys(("appearance", "motion", "warping", "spade", "stitching"))
    half = dtype if device.type == "cuda" else None
    return {
        "appearance": half,
        "motion": None,
        "warping": half,
        "spade": half,
        "stitching": None,
    }
