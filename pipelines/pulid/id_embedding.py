"""Per-reference identity tokens and their concatenation over the reference images (PuLID v1).

For one reference: ``id_cond = [arcface_raw(512) ‖ eva_cls_l2norm(768)]`` and the five EVA hidden states go
through the IDEncoder (cond tokens); the same encoder on all-zero inputs gives the "null identity" (uncond
tokens, the same for every image). Result ``[2,10,C] = [uncond, cond]``, lined up with the CFG rows.

Several references are *appended along the token axis*, never averaged: the main image's 10 tokens, then
each auxiliary image's first 5 (its body tokens) or, with ``id_mix``, all 10.
"""

from __future__ import annotations

import torch

from . import face_prep
from .eva import EvaFeatures, eva_features
from .idencoder import NUM_BODY_TOKENS, IDEncoder

MAX_AUX_REFERENCES = 3


def cond_tokens(idencoder: IDEncoder, arcface: torch.Tensor, eva: EvaFeatures) -> torch.Tensor:
    """[1,512] raw ArcFace + EVA features -> [1,10,C]."""
    return idencoder(torch.cat([arcface, eva.cls], dim=-1), eva.hidden)


def uncond_tokens(idencoder: IDEncoder, hidden_shape: torch.Size, device: torch.device) -> torch.Tensor:
    """IDEncoder(zeros): the biases make these non-zero "null identity" tokens [1,10,C]."""
    width = idencoder.body[0].in_features
    zeros = [torch.zeros(hidden_shape, device=device) for _ in range(5)]
    return idencoder(torch.zeros(1, width, device=device), zeros)


def eva_from_parsed(eva: torch.nn.Module, face01: torch.Tensor, labels: torch.Tensor, antialias: bool) -> EvaFeatures:
    """The aligned face ([1,3,512,512] in [0,1]) and its parsing labels -> EVA features of the whitened face."""
    pixels = face_prep.eva_input(face_prep.whiten(face01, labels), antialias=antialias)
    return eva_features(eva, pixels)


def concat_references(embeddings: list[torch.Tensor], id_mix: bool) -> torch.Tensor:
    """``embeddings[k]`` [2,10,C] per reference (main first) -> [2,N,C] for the attention layers."""
    main, aux = embeddings[0], embeddings[1 : 1 + MAX_AUX_REFERENCES]
    per_aux = main.shape[1] if id_mix else NUM_BODY_TOKENS
    return torch.cat([main, *(e[:, :per_aux] for e in aux)], dim=1)
