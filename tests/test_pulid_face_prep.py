"""PuLID's face preparation and ID-embedding chain against the original code's fixtures (float32 CPU).

The detector and parser networks are out of scope here (the fixtures stub them): the aligned faces and
parsing labels are inputs; whitening, the 336 resize, timm EVA, the IDEncoder and the token concatenation
are ours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pipelines.pulid import face_prep
from pipelines.pulid.eva import TINY, build_eva, load_eva_state
from pipelines.pulid.id_embedding import concat_references, cond_tokens, eva_from_parsed, uncond_tokens
from pipelines.pulid.idencoder import IDEncoder

TOL = 1e-5


@pytest.fixture(scope="module")
def fixtures(reference_dir: Path) -> Path:
    return reference_dir / "pulid" / "fixtures"


def face_inputs(fixtures: Path, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    rgb = np.asarray(Image.open(fixtures / "face_prep_inputs" / f"aligned_face_{k}.png").convert("RGB"))
    labels = np.asarray(Image.open(fixtures / "face_prep_inputs" / f"parsing_labels_{k}.png"))
    return face_prep.to_tensor01(rgb), torch.from_numpy(labels.astype(np.int64))[None, None]


def test_whitening_resize_and_normalisation_match_original(fixtures: Path) -> None:
    io = load_file(fixtures / "face_prep.io.safetensors")
    face, labels = face_inputs(fixtures, 0)
    parse_in = face_prep.parsing_input(face)
    torch.testing.assert_close(
        parse_in[:, :, 200:328, 192:320], io["ref0.parse_input_crop_y200_x192_128"], atol=TOL, rtol=0
    )
    white = face_prep.whiten(face, labels)
    torch.testing.assert_close(white[:, :1], io["ref0.whitened_512_channel0"], atol=TOL, rtol=0)
    assert torch.equal(white[:, 0], white[:, 2])
    small = face_prep.resize(white, [336, 336], face_prep.InterpolationMode.BICUBIC, antialias=False)
    torch.testing.assert_close(small[:, :1], io["ref0.resized_336_antialias_false_channel0"], atol=TOL, rtol=0)
    small_aa = face_prep.resize(white, [336, 336], face_prep.InterpolationMode.BICUBIC, antialias=True)
    torch.testing.assert_close(small_aa[:, :1], io["ref0.resized_336_antialias_true_channel0"], atol=TOL, rtol=0)
    torch.testing.assert_close(face_prep.eva_input(white), io["ref0.eva_input_normalised"], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["a_1030x300", "b_400x1500", "c_700x500_unchanged", "d_1024x1024_unchanged"])
def test_reference_long_edge_resize_matches_original(fixtures: Path, name: str) -> None:
    src = np.asarray(Image.open(fixtures / "resize_long_edge" / f"{name}.in.png").convert("RGB"))
    want = np.asarray(Image.open(fixtures / "resize_long_edge" / f"{name}.out.png").convert("RGB"))
    got = face_prep.resize_long_edge(src)
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_alignment_maps_landmarks_onto_the_template() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)
    # the template, scaled by 0.4 and shifted: the warp must undo exactly that
    landmarks = face_prep.FACE_TEMPLATE_512 * 0.4 + np.array([30.0, 20.0], dtype=np.float32)
    aligned = face_prep.align_face(img, landmarks)
    assert aligned.shape == (512, 512, 3)
    expected = img[round(240 * 0.4 + 20), round(256 * 0.4 + 30)]
    assert np.abs(aligned[240, 256].astype(int) - expected.astype(int)).max() <= 40  # bilinear around the point
    assert tuple(aligned[0, 0]) == face_prep.BORDER_RGB or aligned[0, 0].any()


def test_center_face_choice() -> None:
    boxes = np.array([[0, 0, 50, 50], [40, 40, 60, 60], [70, 70, 100, 100]], dtype=np.float32)
    assert face_prep.center_face(boxes, 100, 100) == 1


@pytest.fixture(scope="module")
def tiny_eva(fixtures: Path):
    meta = json.loads((fixtures / "id_embedding.json").read_text())
    kwargs = dict(meta["eva_tiny_timm_kwargs"], ref_feat_shape=tuple(meta["eva_tiny_timm_kwargs"]["ref_feat_shape"]))
    assert {k: kwargs[k] for k in TINY} == {**TINY, "ref_feat_shape": tuple(TINY["ref_feat_shape"])}
    eva = load_eva_state(build_eva(TINY), load_file(fixtures / "eva_tiny.weights.safetensors"))
    return eva.eval()


@pytest.fixture(scope="module")
def tiny_idencoder(fixtures: Path) -> IDEncoder:
    enc = IDEncoder(context_dim=64, vit_width=64).eval()
    state = {k.removeprefix("id_adapter."): v for k, v in load_file(fixtures / "idencoder.weights.safetensors").items()}
    enc.load_state_dict(state, strict=True)
    return enc


@torch.no_grad()
def test_id_embedding_chain_and_concatenation_match_original(fixtures: Path, tiny_eva, tiny_idencoder) -> None:
    io = load_file(fixtures / "id_embedding.io.safetensors")
    embeddings = []
    for k in range(4):
        face, labels = face_inputs(fixtures, k)
        feats = eva_from_parsed(tiny_eva, face, labels, antialias=False)
        if k == 0:
            for i in range(5):
                ref = io[f"ref0.eva_hidden_{i}"]
                torch.testing.assert_close(feats.hidden[i], ref, atol=max(1e-4, 5e-6 * ref.abs().max().item()), rtol=0)
        raw_ref = io[f"ref{k}.eva_cls_raw"]
        torch.testing.assert_close(feats.cls, raw_ref / raw_ref.norm(dim=1, keepdim=True), atol=TOL, rtol=0)
        arc = io[f"ref{k}.arcface_selected"]
        torch.testing.assert_close(torch.cat([arc, feats.cls], -1), io[f"ref{k}.id_cond"], atol=TOL, rtol=0)
        cond = cond_tokens(tiny_idencoder, arc, feats)
        uncond = uncond_tokens(tiny_idencoder, feats.hidden[0].shape, torch.device("cpu"))
        torch.testing.assert_close(uncond, io[f"ref{k}.id_tokens_uncond"], atol=TOL, rtol=0)
        embedding = torch.cat([uncond, cond])
        torch.testing.assert_close(embedding, io[f"ref{k}.id_embedding"], atol=TOL, rtol=0)
        embeddings.append(embedding)
    torch.testing.assert_close(concat_references(embeddings[:1], False), io["id_tokens.1ref"], atol=TOL, rtol=0)
    torch.testing.assert_close(concat_references(embeddings, False), io["id_tokens.4ref_mix0"], atol=TOL, rtol=0)
    torch.testing.assert_close(concat_references(embeddings, True), io["id_tokens.4ref_mix1"], atol=TOL, rtol=0)
    assert concat_references(embeddings + embeddings, True).shape[1] == 40  # at most 3 auxiliary images
