"""PuLID's own modules against the original code's fixtures (float32 CPU): IDEncoder and the ID attention
processors in every mode, including the guidance 1.0 folding quirk. Tolerances from the fixtures' README §5."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention
from safetensors.torch import load_file

from pipelines.pulid.id_attention import IDAttnProcessor, IDConditioning, SelfAttnProcessor, row_sequences
from pipelines.pulid.idencoder import IDEncoder

TOL = 1e-5


@pytest.fixture(scope="module")
def fixtures(reference_dir: Path) -> Path:
    return reference_dir / "pulid" / "fixtures"


def strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def test_idencoder_matches_original_per_row_and_batched(fixtures: Path) -> None:
    enc = IDEncoder(context_dim=64, vit_width=64).eval()
    enc.load_state_dict(strip(load_file(fixtures / "idencoder.weights.safetensors"), "id_adapter."), strict=True)
    io = load_file(fixtures / "idencoder.io.safetensors")
    hidden = [io[f"input.hidden_{i}"] for i in range(5)]
    with torch.no_grad():
        rows = [enc(io["input.id_cond"][b : b + 1], [h[b : b + 1] for h in hidden]) for b in range(2)]
        torch.testing.assert_close(torch.cat(rows), io["output.id_tokens"], atol=TOL, rtol=0)
        body = enc.body(io["input.id_cond"][:1])
        torch.testing.assert_close(body, io["inter.row0.body"], atol=TOL, rtol=0)
        batched = enc(io["input.id_cond"], hidden)
        torch.testing.assert_close(batched, io["output.id_tokens"], atol=TOL, rtol=0)
        uncond = enc(torch.zeros(1, 1280), [torch.zeros_like(h[:1]) for h in hidden])
        torch.testing.assert_close(uncond, io["output.uncond_tokens"], atol=TOL, rtol=0)


def test_idencoder_full_size_matches_checkpoint_manifest(reference_dir: Path) -> None:
    manifest = json.loads((reference_dir / "pulid" / "pulid_v1_state_dict_manifest.json").read_text())
    shapes = {k: list(v) for k, v in manifest["tensors"].items() if k.startswith("id_adapter.")}
    with torch.device("meta"):
        enc = IDEncoder()
    ours = {f"id_adapter.{k}": list(v.shape) for k, v in enc.state_dict().items()}
    assert ours == shapes


def _attention_layer(fixtures: Path, file: str) -> Attention:
    layer = Attention(query_dim=64, cross_attention_dim=64, heads=4, dim_head=16, bias=False, out_bias=True)
    weights = load_file(fixtures / file)
    layer.load_state_dict({k: v for k, v in weights.items() if not k.startswith("id_to_")}, strict=True)
    return layer.eval()


@pytest.fixture(scope="module")
def attn_case(fixtures: Path):
    meta = json.loads((fixtures / "attn_processor.json").read_text())
    io = load_file(fixtures / "attn_processor.io.safetensors")
    layer = _attention_layer(fixtures, "attn_processor.weights.safetensors")
    proc = IDAttnProcessor(64, 64)
    weights = load_file(fixtures / "attn_processor.weights.safetensors")
    proc.load_state_dict({k: v for k, v in weights.items() if k.startswith("id_to_")}, strict=True)
    layer.set_processor(proc)
    return meta, io, layer


CASES = [
    "fid_1ref", "fid_4ref_mix0", "fid_4ref_mix1", "fid_1ref_cfg1", "sty_1ref", "sty_4ref_mix0", "sty_4ref_mix1",
    "sty_1ref_cfg1", "plain_1ref", "fid_1ref_scale0", "noid",
]  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_id_attention_processor_matches_original(attn_case, name: str) -> None:
    meta, io, layer = attn_case
    case = next(c for c in meta["cases"] if c["name"] == name)
    rows = case["hidden_rows"]
    hidden = io["input.hidden_states"][rows]
    context = io["input.encoder_hidden_states"][rows]
    cond = None
    if case["id_tokens"] is not None:
        mode = case["mode"].replace("extremely style", "extreme style")
        seqs = row_sequences(io[f"input.id_tokens.{case['id_tokens']}"], mode, cfg=len(rows) == 2)
        cond = IDConditioning.build(seqs, [mode] * len(seqs), [case["id_scale"]] * len(seqs), torch.device("cpu"))
    seen: dict[str, torch.Tensor] = {}
    hook = layer.to_out[0].register_forward_pre_hook(lambda _m, args: seen.__setitem__("pre", args[0]))
    with torch.no_grad():
        out = layer(hidden, encoder_hidden_states=context, id_cond=cond)
    hook.remove()
    torch.testing.assert_close(seen["pre"], io[f"{name}.pre_to_out"], atol=TOL, rtol=0)
    torch.testing.assert_close(out, io[f"{name}.output"], atol=TOL, rtol=0)


def test_rows_with_different_modes_share_one_call(attn_case) -> None:
    """A fidelity request and a style request in one batch give each what it gets alone."""
    _, io, layer = attn_case
    hidden, context = io["input.hidden_states"], io["input.encoder_hidden_states"]
    tokens = io["input.id_tokens.1ref"]
    fid = row_sequences(tokens, "fidelity", cfg=True)
    sty = row_sequences(io["input.id_tokens.4ref_mix1"], "extreme style", cfg=True)
    cond = IDConditioning.build(
        fid + sty, ["fidelity"] * 2 + ["extreme style"] * 2, [0.8, 0.8, 1.3, 1.3], torch.device("cpu")
    )
    with torch.no_grad():
        joint = layer(torch.cat([hidden, hidden]), encoder_hidden_states=torch.cat([context, context]), id_cond=cond)
    torch.testing.assert_close(joint[:2], io["fid_1ref.output"], atol=TOL, rtol=0)
    alone = IDConditioning.build(sty, ["extreme style"] * 2, [1.3, 1.3], torch.device("cpu"))
    with torch.no_grad():
        ref = layer(hidden, encoder_hidden_states=context, id_cond=alone)
    torch.testing.assert_close(joint[2:], ref, atol=0, rtol=0)


def test_self_attention_processor_matches_original(fixtures: Path) -> None:
    io = load_file(fixtures / "attn_processor.io.safetensors")
    layer = _attention_layer(fixtures, "attn_processor.selfattn.weights.safetensors")
    layer.set_processor(SelfAttnProcessor())
    with torch.no_grad():
        out = layer(io["input.hidden_states"], id_cond=None)
    torch.testing.assert_close(out, io["selfattn.output"], atol=TOL, rtol=0)


def test_full_adapter_matches_pulid_v1_checkpoint_key_for_key(reference_dir: Path) -> None:
    """A meta-device SDXL UNet + our adapter: the state dict is pulid_v1.bin's, and index i is the same layer."""
    from pipelines.pulid.adapter import build_adapter
    from pipelines.pulid.sdxl import UNET_REAL, build_unet

    manifest = json.loads((reference_dir / "pulid" / "pulid_v1_state_dict_manifest.json").read_text())
    unet = build_unet(UNET_REAL, "meta")
    adapter = build_adapter(unet, vit_width=1024, device="meta")
    ours = {k: list(v.shape) for k, v in adapter.state_dict().items()}
    assert ours == {k: list(v) for k, v in manifest["tensors"].items()}
    assert sum(p.numel() for p in adapter.parameters()) == int(manifest["num_params"])
    index_map = json.loads((reference_dir / "pulid" / "pulid_v1_attn_layer_index_map.json").read_text())
    names = list(unet.attn_processors)
    assert len(names) == len(index_map["entries"]) == 140
    for entry in index_map["entries"]:
        assert names[entry["index"]] == entry["unet_attn_processor"]
        if "hidden_size" in entry:
            assert adapter.id_adapter_attn_layers[entry["index"]].id_to_k.out_features == entry["hidden_size"]


def test_eva_matches_the_vendored_checkpoint_key_for_key(reference_dir: Path) -> None:
    """The vendored ``visual.*`` layout (QuanSun's file) maps onto timm's EVA02-L, every key and shape."""
    from timm.models.eva import checkpoint_filter_fn

    from pipelines.pulid.eva import REAL, build_eva

    manifest = json.loads((reference_dir / "pulid" / "eva02_clip_l14_336_visual_manifest.json").read_text())
    model = build_eva(REAL, "meta")
    state = {k: torch.empty(v, device="meta") for k, v in manifest["tensors"].items()}
    mapped = checkpoint_filter_fn(state, model)
    assert {k: list(v.shape) for k, v in mapped.items()} == {k: list(v.shape) for k, v in model.state_dict().items()}


def seeded_tensor(seed: int, key: str, shape: list[int], kind: str) -> torch.Tensor:
    """The fixtures' recipe: one generator per tensor seeded with seed * 1000003 + crc32(key)."""
    gen = torch.Generator().manual_seed(seed * 1000003 + zlib.crc32(key.encode()))
    t = torch.randn(shape, generator=gen)
    if kind == "weight":
        return t / math.sqrt(math.prod(shape[1:]))
    return 1 + 0.1 * t if kind == "norm" else 0.05 * t


@torch.no_grad()
def test_idencoder_full_size_seeded_matches_original(fixtures: Path) -> None:
    meta = json.loads((fixtures / "idencoder.json").read_text())["full_seeded"]
    io = load_file(fixtures / "idencoder_full_seeded.io.safetensors")
    state = {k: seeded_tensor(606, k, shape, kind) for k, (shape, kind) in meta["weights_shape_kind"].items()}
    for key, (total, total_abs, first) in meta["weights_checksums_sum_abs_first"].items():
        t = state[key].double()
        assert (
            abs(t.sum().item() - total) < 1e-3 * max(1.0, abs(total_abs)) and abs(t.flatten()[0].item() - first) < 1e-6
        )
    enc = IDEncoder().eval()
    enc.load_state_dict(state, strict=True)
    gen = torch.Generator().manual_seed(12)
    arc = torch.randn(1, 512, generator=gen)
    cls = torch.randn(1, 768, generator=gen)
    cls = cls / cls.norm(dim=1, keepdim=True)
    hidden = [torch.randn(1, 577, 1024, generator=gen) for _ in range(5)]
    id_cond = torch.cat([arc, cls], dim=-1)
    torch.testing.assert_close(id_cond, io["check.input.id_cond"].reshape(id_cond.shape), atol=1e-6, rtol=0)
    torch.testing.assert_close(hidden[0][:, :2], io["check.input.hidden_0_first_row"], atol=1e-6, rtol=0)
    cond = enc(id_cond, hidden)
    uncond = enc(torch.zeros_like(id_cond), [torch.zeros_like(h) for h in hidden])
    torch.testing.assert_close(cond, io["output.cond_tokens"], atol=TOL, rtol=0)
    torch.testing.assert_close(uncond, io["output.uncond_tokens"], atol=TOL, rtol=0)
