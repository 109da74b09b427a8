"""CatVTON against the original code's golden run (shared/reference/catvton/fixtures, tiny weights, CPU float32).

The golden run seeded the global RNG with 1234 (the two VAE posterior samples) and passed a CPU generator
seeded with 42 (initial noise, then one DDIM variance noise per step). The pipeline's two per-request
generators are given those seeds, so no noise needs injecting: every draw is reproduced in order.

Tolerances (README §4): preprocessing exact; tensors max |Δ| <= 1e-4; the uint8 image within 1 level on
at most 0.1 % of the pixels (a 1-ulp float difference can flip a rounding).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pipelines.catvton.configs import TINY_UNET, TINY_VAE
from pipelines.catvton.denoise import Row, denoise_step, predict_noise, scheduler_for, unet_input
from pipelines.catvton.networks import (
    AttentionCheckpointError,
    CatVTONNetworks,
    attention_index_map,
    build_unet,
    build_vae,
    load_attention_checkpoint,
)
from pipelines.catvton.pipeline import decode, start_rows
from pipelines.catvton.preprocess import (
    blur_mask,
    image_tensor,
    mask_tensor,
    masked_image,
    resize_and_crop,
    resize_and_padding,
)

pytestmark = pytest.mark.reference

SIZE = (192, 256)
TOL = 1e-4


@pytest.fixture(scope="module")
def fixtures(reference_dir: Path) -> Path:
    return reference_dir / "catvton" / "fixtures"


@pytest.fixture(scope="module")
def golden(fixtures: Path) -> dict[str, torch.Tensor]:
    return load_file(str(fixtures / "golden" / "golden.safetensors"))


def reference_networks(models: Path) -> CatVTONNetworks:
    unet = build_unet(TINY_UNET)
    unet.load_state_dict(load_file(str(models / "unet" / "diffusion_pytorch_model.safetensors")), strict=True)
    vae = build_vae(TINY_VAE)
    vae.load_state_dict(load_file(str(models / "vae" / "diffusion_pytorch_model.safetensors")), strict=True)
    load_attention_checkpoint(unet, load_file(str(attention_file(models))))
    return CatVTONNetworks(unet.eval().requires_grad_(False), vae.eval().requires_grad_(False))


def attention_file(models: Path) -> Path:
    return models / "attention" / "mix-48k-1024" / "attention" / "model.safetensors"


@pytest.fixture(scope="module")
def nets(fixtures: Path) -> CatVTONNetworks:
    return reference_networks(fixtures / "models")


def close(actual: torch.Tensor, expected: torch.Tensor, what: str, tol: float = TOL) -> None:
    assert actual.shape == expected.shape, what
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= tol, f"{what}: max |Δ| {err:.3g} > {tol}"


# ------------------------------------------------------------------------------ preprocessing (exact)


def test_preprocessing_is_exact(fixtures: Path, golden: dict[str, torch.Tensor]) -> None:
    person = resize_and_crop(Image.open(fixtures / "inputs" / "person_raw.png").convert("RGB"), SIZE)
    garment = resize_and_padding(Image.open(fixtures / "inputs" / "garment_raw.png").convert("RGB"), SIZE)
    blurred = blur_mask(np.asarray(Image.open(fixtures / "inputs" / "mask_automasker_192x256.png")))
    assert np.array_equal(np.asarray(person), golden["inputs.person_resized_u8"].numpy())
    assert np.array_equal(np.asarray(garment), golden["inputs.garment_padded_u8"].numpy())
    assert np.array_equal(np.asarray(blurred), golden["inputs.mask_blurred_u8"].numpy())
    image, mask = image_tensor(person), mask_tensor(blurred)
    assert torch.equal(image, golden["pre.image"])
    assert torch.equal(image_tensor(garment), golden["pre.condition_image"])
    assert torch.equal(mask, golden["pre.mask"])
    assert torch.equal(masked_image(image, mask), golden["pre.masked_image"])


# ------------------------------------------------------------------------------ attention checkpoint loader


def test_attention_checkpoint_lands_on_the_mapped_parameters(fixtures: Path) -> None:
    models = fixtures / "models"
    index = json.loads((models / "attention_index_map.json").read_text())
    state = load_file(str(attention_file(models)))
    base = load_file(str(models / "unet" / "diffusion_pytorch_model.safetensors"))
    unet = build_unet(TINY_UNET)
    unet.load_state_dict(base, strict=True)
    written = load_attention_checkpoint(unet, state)
    params = dict(unet.named_parameters())
    mapping = index["checkpoint_key_to_unet_param"]
    assert len(state) == len(mapping) == len(written) == 80
    assert sorted(written) == sorted(mapping.values())
    for key, target in mapping.items():
        assert torch.equal(params[target], state[key]), key
        assert not torch.equal(base[target], state[key]), f"{key}: fixture equals the base weight"
    assert {str(k): v for k, v in attention_index_map(unet).items()} == index["index_to_unet_path"]
    untouched = set(base) - set(mapping.values())
    assert all(torch.equal(params[k], base[k]) for k in untouched if k in params)


def test_attention_checkpoint_with_a_missing_or_extra_key_fails(fixtures: Path) -> None:
    state = load_file(str(attention_file(fixtures / "models")))
    unet = build_unet(TINY_UNET, "meta")
    missing = {k: v for k, v in state.items() if k != "56.to_v.weight"}
    with pytest.raises(
        AttentionCheckpointError, match=r"missing.*up_blocks\.1\.attentions\.1\.transformer_blocks\.0\.attn1\.to_v"
    ):
        load_attention_checkpoint(unet, missing)
    with pytest.raises(AttentionCheckpointError, match=re.escape("unexpected key '200.to_q.weight'")):
        load_attention_checkpoint(unet, {**state, "200.to_q.weight": state["0.to_q.weight"]})
    with pytest.raises(AttentionCheckpointError, match=r"'3\.bias'.*not an attn1 weight"):
        load_attention_checkpoint(unet, {**state, "3.bias": state["0.to_out.0.bias"]})
    with pytest.raises(AttentionCheckpointError, match=re.escape("'0.to_q.weight' has shape")):
        load_attention_checkpoint(unet, {**state, "0.to_q.weight": torch.zeros(3, 3)})


def test_full_size_unet_matches_the_attention_manifest(reference_dir: Path) -> None:
    from pipelines.catvton.configs import REAL_UNET

    manifest = json.loads((reference_dir / "catvton" / "attention_checkpoint.manifest.json").read_text())
    unet = build_unet(REAL_UNET, "meta")
    assert {str(k): v for k, v in attention_index_map(unet).items()} == manifest["module_index_to_unet_path"]
    for aliases in ("state_dict_dedup_first_name", "state_dict_all_aliases"):
        state = {k: torch.empty(shape, device="meta") for k, shape in manifest[aliases].items()}
        assert len(load_attention_checkpoint(unet, state)) == 80, aliases


# ------------------------------------------------------------------------------ denoising step (teacher-forced)


def golden_row(golden: dict[str, torch.Tensor], i: int) -> Row:
    return Row(
        key=0,
        latents=golden[f"step{i}.latents_in"],
        mask=golden["lat.mask_latent_concat_cfg"][1:2],
        condition=golden["lat.masked_latent_concat_cfg"][1:2],
        guidance=2.5,
        num_steps=3,
        generator=torch.Generator(),
        index=i,
    )


def test_timesteps(golden: dict[str, torch.Tensor]) -> None:
    assert scheduler_for(3).timesteps.tolist() == golden["sched.timesteps"].tolist() == [667, 334, 1]


@pytest.mark.parametrize("i", [0, 1, 2])
def test_denoising_step_teacher_forced(nets: CatVTONNetworks, golden: dict[str, torch.Tensor], i: int) -> None:
    row = golden_row(golden, i)
    sample, timesteps, _ = unet_input([row], torch.float32)
    assert torch.equal(sample, golden[f"step{i}.unet_in"])  # [uncond, cond], garment zeroed in uncond
    assert timesteps.tolist() == [int(golden[f"step{i}.t"])] * 2
    with torch.inference_mode():
        eps = nets.unet(sample, timesteps, encoder_hidden_states=None).sample
        close(eps[:1], golden[f"step{i}.eps_uncond"], f"step{i}.eps_uncond")
        close(eps[1:], golden[f"step{i}.eps_cond"], f"step{i}.eps_cond")
        (guided,) = predict_noise(nets.unet, [row])
    close(guided, golden[f"step{i}.eps_guided"], f"step{i}.eps_guided")
    out = scheduler_for(3).step(
        golden[f"step{i}.eps_guided"],
        row.timestep,
        row.latents,
        eta=1.0,
        variance_noise=golden[f"step{i}.ddim_variance_noise"],
    )
    close(out.pred_original_sample, golden[f"step{i}.pred_original_sample"], f"step{i}.pred_original_sample")
    close(out.prev_sample, golden[f"step{i}.latents_out"], f"step{i}.latents_out")


# ------------------------------------------------------------------------------ the whole pipeline


def test_whole_pipeline_matches_every_stage(
    nets: CatVTONNetworks, golden: dict[str, torch.Tensor], fixtures: Path
) -> None:
    """From the preprocessed images and the stand-in AutoMasker mask down to the uint8 image."""
    person = Image.fromarray(golden["inputs.person_resized_u8"].numpy())
    garment = Image.fromarray(golden["inputs.garment_padded_u8"].numpy())
    automask = np.asarray(Image.open(fixtures / "inputs" / "mask_automasker_192x256.png"))
    with torch.inference_mode():
        (row,) = start_rows(nets.vae, [0], [person], [garment], [automask], [2.5], 3, [(42, 1234)])
    half = row.condition.shape[-2] // 2
    close(row.condition[..., :half, :], golden["lat.masked_latent"], "lat.masked_latent")
    close(row.condition[..., half:, :], golden["lat.condition_latent"], "lat.condition_latent")
    close(row.unconditional(), golden["lat.masked_latent_concat_cfg"][:1], "unconditional condition")
    assert torch.equal(row.mask, golden["lat.mask_latent_concat_cfg"][1:2])
    assert torch.equal(row.latents, golden["noise.init"])  # the generator's first draw
    for i in range(3):
        close(row.latents, golden[f"step{i}.latents_in"], f"step{i}.latents_in")
        denoise_step(nets.unet, [row])
        close(row.latents, golden[f"step{i}.latents_out"], f"step{i}.latents_out")
    assert row.done
    close(row.latents, golden["final.latents"], "final.latents")
    image = decode(nets.vae, [row])[0]
    expected = golden["out.image_u8"].numpy()
    diff = np.abs(image.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, f"{int((diff > 0).sum())} pixels differ"


def test_full_size_configs_have_the_real_key_sets_and_sizes(fixtures: Path) -> None:
    """The real configs on meta: the fixtures' key sets (identical to the real files') and the real sizes
    (SD1.5's 859,520,964 UNet parameters + 14,400 for conv_in's 5 extra inpainting channels)."""
    from safetensors import safe_open

    from pipelines.catvton.configs import REAL_UNET, REAL_VAE

    for build, config, name, params in (
        (build_unet, REAL_UNET, "unet", 859_535_364),
        (build_vae, REAL_VAE, "vae", 83_653_863),
    ):
        module = build(config, "meta")
        with safe_open(str(fixtures / "models" / name / "diffusion_pytorch_model.safetensors"), "pt") as f:
            assert set(module.state_dict()) == set(f.keys()), name
        assert sum(p.numel() for p in module.parameters()) == params, name
