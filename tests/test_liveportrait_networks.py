"""LivePortrait networks: strict checkpoint layout, parity with the original code, batching, loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.contract import WeightSource
from pipelines.liveportrait.networks import (
    FIXTURES,
    NETWORK_FILES,
    REAL,
    TINY,
    bins_to_degrees,
    build_network,
    build_networks,
    load_checkpoint,
    load_network,
    load_networks,
)
from pipelines.liveportrait.networks.convert import convert
from pipelines.liveportrait.networks.state_dict import STITCHING_PARTS, normalize_state_dict
from tests.support.reference import missing_reference

NAMES = list(NETWORK_FILES)
torch.set_grad_enabled(False)


def manifest_key(name: str) -> str:
    return NETWORK_FILES[name][0]


@pytest.fixture(scope="module")
def lp_ref(reference_dir: Path) -> Path:
    path = reference_dir / "liveportrait"
    if not (path / "fixtures" / "fixtures_index.json").is_file():
        missing_reference(f"LivePortrait reference data not found under {path}")
    return path


def fixture_tensors(lp_ref: Path, name: str, kind: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(lp_ref / "fixtures" / f"{manifest_key(name)}.{kind}.safetensors")


def run_network(name: str, module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Call a network the way the fixtures were made; returns named outputs."""
    if name == "appearance":
        return {"feature_3d": module(inputs["source_image"])}
    if name == "motion":
        out = module(inputs["source_image"])
        return {**out, **{f"{a}_deg": bins_to_degrees(out[a]) for a in ("pitch", "yaw", "roll")}}
    if name == "warping":
        return module(inputs["feature_3d"], kp_driving=inputs["kp_driving"], kp_source=inputs["kp_source"])
    if name == "spade":
        return {"image": module(inputs["feature"])}
    return module(**inputs)


# --- strict layout against the full-size manifests ------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("name", NAMES)
def test_full_size_modules_match_checkpoint_manifest(lp_ref: Path, name: str) -> None:
    doc = json.loads((lp_ref / f"{manifest_key(name)}.manifest.json").read_text())
    expected = {k.replace("/", "."): v for k, v in doc["state_dict"].items()}  # stitching: "<part>/<key>"
    module = build_network(name, REAL, "meta")
    got = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert set(got) == set(expected)
    assert got == expected
    params = sum(p.numel() for p in module.parameters())
    header = doc["header"]
    assert params == header.get("num_params_excluding_bn_stats_and_spectral_uv", header.get("num_params"))


@pytest.mark.reference
@pytest.mark.parametrize("name", NAMES)
def test_meta_load_is_strict(lp_ref: Path, name: str) -> None:
    """A missing or unexpected key is an error, not silently ignored."""
    weights = fixture_tensors(lp_ref, name, "weights")
    victim = next(k for k in weights if not k.endswith("num_batches_tracked"))  # BN refills that one
    dropped = {k: v for k, v in weights.items() if k != victim}
    with pytest.raises(RuntimeError, match="Missing key"):
        load_network(name, FIXTURES, dropped)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_network(name, FIXTURES, {**weights, "stitching.extra.weight": torch.zeros(1)})


# --- parity with the original implementation (random-weight fixtures) ------------------------------


def state_dict_digest(sd: dict[str, torch.Tensor]) -> str:
    """The fixtures' digest: sha256 over sorted keys of ``key|shape|dtype|raw bytes``."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key].detach().contiguous().cpu()
        shape = ",".join(map(str, t.shape))
        h.update(f"{key}|{shape}|{str(t.dtype).removeprefix('torch.')}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@pytest.mark.reference
@pytest.mark.parametrize("name", NAMES)
def test_loaded_state_dict_matches_fixture_digest(lp_ref: Path, name: str) -> None:
    """Strict load keeps every tensor (keys, shapes, dtypes, bytes) of the original state dict."""
    index = json.loads((lp_ref / "fixtures" / "fixtures_index.json").read_text())[manifest_key(name)]
    module = load_network(name, FIXTURES, fixture_tensors(lp_ref, name, "weights"))
    assert state_dict_digest(module.state_dict()) == index["state_dict_sha256"]


@pytest.mark.reference
@pytest.mark.parametrize("name", NAMES)
def test_fixture_parity(lp_ref: Path, name: str) -> None:
    module = load_network(name, FIXTURES, fixture_tensors(lp_ref, name, "weights")).eval()
    io = fixture_tensors(lp_ref, name, "io")
    inputs = {k.removeprefix("input."): v for k, v in io.items() if k.startswith("input.")}
    expected = {k.removeprefix("output."): v for k, v in io.items() if k.startswith("output.")}
    got = run_network(name, module, inputs)
    assert expected
    for key, want in expected.items():
        atol = 1e-4 if key.endswith("_deg") else 1e-5
        assert got[key].dtype == torch.float32
        assert got[key].shape == want.shape, key
        torch.testing.assert_close(got[key], want, atol=atol, rtol=0, msg=f"{name}.{key}")


def original_layout(name: str, sd: dict[str, torch.Tensor]) -> dict[str, object]:
    """Our keys -> the layout of KwaiVGI's .pth files (stitching: nested DDP sub-dicts)."""
    if name != "stitching":
        return dict(sd)
    nested: dict[str, object] = {}
    for original, ours in STITCHING_PARTS.items():
        nested[original] = {f"module.{k[len(ours) + 1 :]}": v for k, v in sd.items() if k.startswith(f"{ours}.")}
    return nested


@pytest.mark.reference
@pytest.mark.parametrize("name", NAMES)
def test_pth_and_converted_safetensors_load_identically(lp_ref: Path, name: str, tmp_path: Path) -> None:
    weights = fixture_tensors(lp_ref, name, "weights")
    pth = tmp_path / f"{manifest_key(name)}.pth"
    torch.save(original_layout(name, weights), pth)
    converted = tmp_path / f"{manifest_key(name)}.safetensors"
    convert(pth, converted)
    if name == "stitching":
        from safetensors.torch import load_file

        assert all(
            k.startswith(("retarget_shoulder_module.", "retarget_mouth_module.", "retarget_eye_module."))
            for k in load_file(converted)
        )
    for path in (pth, converted):
        module = load_network(name, FIXTURES, load_checkpoint(path))
        for key, value in module.state_dict().items():
            torch.testing.assert_close(value, weights[key], atol=0, rtol=0, msg=f"{path.name}: {key}")


@pytest.mark.reference
def test_spectral_norm_folded_weight_gives_same_generator(lp_ref: Path) -> None:
    """A checkpoint with plain ``<conv>.weight`` (spectral norm folded in) loads to the same function."""
    weights = fixture_tensors(lp_ref, "spade", "weights")
    reference = load_network("spade", FIXTURES, weights)
    folded = {}
    for key, value in weights.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "weight_orig":
            sigma = torch.dot(weights[f"{prefix}.weight_u"], value.flatten(1) @ weights[f"{prefix}.weight_v"])
            folded[f"{prefix}.weight"] = value / sigma
        elif leaf not in ("weight_u", "weight_v"):
            folded[key] = value
    module = load_network("spade", FIXTURES, normalize_state_dict("spade_generator", folded))
    feature = fixture_tensors(lp_ref, "spade", "io")["input.feature"][..., :16, :16]
    torch.testing.assert_close(module(feature), reference(feature), atol=1e-5, rtol=0)


# --- batching -------------------------------------------------------------------------------------


def random_inputs(name: str, batch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Inputs for the tiny networks; W and G get 16x16 and 8x8 maps (they are resolution-agnostic) for speed."""
    cfg = TINY
    if name in ("appearance", "motion"):
        return {"source_image": torch.rand(batch, 3, 256, 256, generator=gen)}
    if name == "warping":
        f = cfg.appearance
        kp_source = torch.rand(batch, 21, 3, generator=gen) * 1.4 - 0.7
        return {
            "feature_3d": torch.randn(batch, f.reshape_channel, f.reshape_depth, 16, 16, generator=gen),
            "kp_source": kp_source,
            "kp_driving": kp_source + 0.05 * torch.randn(batch, 21, 3, generator=gen),
        }
    if name == "spade":
        return {"feature": torch.randn(batch, cfg.spade.in_channels, 8, 8, generator=gen)}
    return {k: 0.3 * torch.randn(batch, n, generator=gen) for k, n in (("stitching", 126), ("lip", 65), ("eye", 66))}


@pytest.fixture(scope="module")
def tiny_nets():
    return load_networks(WeightSource.tiny(seed=3))


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_items(tiny_nets, name: str) -> None:
    module = getattr(tiny_nets, name)
    inputs = random_inputs(name, 3, torch.Generator().manual_seed(7))
    batched = run_network(name, module, inputs)
    for i in range(3):
        single = run_network(name, module, {k: v[i : i + 1] for k, v in inputs.items()})
        for key, value in single.items():
            torch.testing.assert_close(batched[key][i : i + 1], value, atol=1e-5, rtol=1e-5, msg=f"{name}.{key}")


# --- loading --------------------------------------------------------------------------------------


def test_tiny_networks_chain_end_to_end(tiny_nets) -> None:
    assert all(not m.training for m in tiny_nets.modules().values())
    assert all(not p.requires_grad for m in tiny_nets.modules().values() for p in m.parameters())
    img = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    f_s = tiny_nets.appearance(img)
    assert f_s.shape == (1, TINY.appearance.reshape_channel, TINY.appearance.reshape_depth, 64, 64)
    raw = tiny_nets.motion(img)
    assert raw["kp"].shape == (1, 63) and raw["pitch"].shape == (1, 66) and raw["scale"].shape == (1, 1)
    x_s = raw["kp"].view(1, 21, 3)
    warped = tiny_nets.warping(f_s, kp_driving=x_s + 0.02, kp_source=x_s)
    out = tiny_nets.spade(warped["out"])
    assert out.shape == (1, 3, 512, 512)
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 1e-3


def test_tiny_weights_are_seeded() -> None:
    a, b, c = (build_networks(TINY, seed=s).stitching.state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_real_source_without_files_names_the_pull_command(tmp_path: Path, monkeypatch) -> None:
    import weights

    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(weights.MissingWeights, match="fal-onprem weights"):
        load_networks(WeightSource.real(tmp_path))


def test_manifest_lists_networks_and_cropper_models() -> None:
    import weights

    files = {f.key: f for f in weights.manifest("liveportrait")}
    assert {key for key, _, _ in NETWORK_FILES.values()} <= set(files)
    assert {"det_10g", "2d106det", "landmark_203"} <= set(files)
    assert files["det_10g"].license_restricted and files["2d106det"].license_restricted
    assert not files["spade_generator"].license_restricted


@pytest.mark.slow
def test_real_source_loads_pulled_and_converted_files(tmp_path: Path) -> None:
    """Full-size .pth files in the original layout, converted by the weights tool's ``liveportrait``
    converter, load strictly through load_networks(real) and give the same networks."""
    import weights
    from weights.convert import run_conversion

    full = build_networks(REAL, seed=5)
    entries = {f.key: f for f in weights.manifest("liveportrait")}
    for name, (key, _, _) in NETWORK_FILES.items():
        src = weights.local_path(entries[key], tmp_path)
        src.parent.mkdir(parents=True, exist_ok=True)
        torch.save(original_layout(name, getattr(full, name).state_dict()), src)
        run_conversion(entries[key].convert, src, weights.converted_path(entries[key], tmp_path))
    nets = load_networks(WeightSource.real(tmp_path))
    for name in NETWORK_FILES:
        want, got = getattr(full, name).state_dict(), getattr(nets, name).state_dict()
        assert set(want) == set(got), name
        assert all(torch.equal(want[k], got[k]) for k in want), name
    x = 0.3 * torch.randn(2, 126)
    torch.testing.assert_close(nets.stitching.stitching(x), full.stitching.stitching(x), atol=0, rtol=0)


def test_cpu_runs_float32_whatever_is_asked() -> None:
    nets = load_networks(WeightSource.tiny(), device="cpu", dtype="bfloat16")
    assert nets.dtype == torch.float32
    assert {p.dtype for m in nets.modules().values() for p in m.parameters()} == {torch.float32}
    assert all(getattr(m, "autocast_dtype", None) is None for m in nets.modules().values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_half_request_autocasts_f_w_g_only() -> None:
    nets = load_networks(WeightSource.tiny(), device="cuda", dtype="float16")
    assert nets.dtype == torch.float16
    assert [nets.appearance.autocast_dtype, nets.warping.autocast_dtype, nets.spade.autocast_dtype] == [
        torch.float16
    ] * 3
    assert nets.motion.autocast_dtype is None
    out = nets.spade(torch.randn(2, TINY.spade.in_channels, 8, 8, device="cuda"))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# Max |error| of autocast bfloat16 measured on CPU (precision.py): F 4.8e-3, W out 3.5e-3, G 7.8e-3.
@pytest.mark.reference
@pytest.mark.parametrize(("name", "bound"), [("appearance", 1e-2), ("warping", 1e-2), ("spade", 2e-2)])
def test_autocast_path_stays_close_to_float32(lp_ref: Path, name: str, bound: float) -> None:
    module = load_network(name, FIXTURES, fixture_tensors(lp_ref, name, "weights")).eval()
    io = fixture_tensors(lp_ref, name, "io")
    inputs = {k.removeprefix("input."): v for k, v in io.items() if k.startswith("input.")}
    module.autocast_dtype = torch.bfloat16
    got = run_network(name, module, inputs)
    for key, want in ((k.removeprefix("output."), v) for k, v in io.items() if k.startswith("output.")):
        err = float((got[key] - want).abs().max())
        assert got[key].dtype == torch.float32
        assert 1e-6 < err < bound, (key, err)  # lower bound: autocast really ran in bfloat16
