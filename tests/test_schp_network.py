"""SCHP AugmentCE2P network: checkpoint layout (strict, full size on meta) and stage-wise parity with the
original code (goldens in shared/reference/schp, random recipe-v1 weights)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.common.parsing import checkpoint
from pipelines.common.parsing.config import config_for
from pipelines.common.parsing.network import SCHPNet
from tests.support.schp import golden_parser, release_golden_parsers

DATASETS = ("lip", "atr")


@pytest.fixture(scope="module", autouse=True)
def _free_full_size_parsers() -> Iterator[None]:
    yield
    release_golden_parsers()


def _manifest(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "catvton" / "schp_resnet101.manifest.json").read_text())


def _meta_net(dataset: str, tiny: bool = False) -> SCHPNet:
    with torch.device("meta"):
        return SCHPNet(config_for(dataset, tiny))  # type: ignore[arg-type]


@pytest.mark.reference
@pytest.mark.parametrize("dataset", DATASETS)
def test_full_size_net_has_exactly_the_checkpoint_keys_and_shapes(reference_dir: Path, dataset: str) -> None:
    layout = _manifest(reference_dir)[dataset]["checkpoint_state_dict"]
    expected = {k: tuple(v) for k, v in checkpoint.strip_prefix(layout).items()}
    net = _meta_net(dataset)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert len(expected) == 603
    assert ours == expected
    # strict loading through the real loader, on meta tensors (no memory)
    meta_ckpt = {k: torch.empty(v, device="meta") for k, v in layout.items()}
    checkpoint.load_strict(net, checkpoint.strip_prefix(meta_ckpt))


@pytest.mark.reference
@pytest.mark.parametrize("dataset", DATASETS)
def test_upstream_names_cover_catvton_port_through_its_rename_map(reference_dir: Path, dataset: str) -> None:
    """CatVTON's BN+LeakyReLU port renames 7 keys; our ABN layer keeps upstream names, so the port's
    keys (less num_batches_tracked) are exactly ours after the rename map, minus the 4 ignored ones."""
    entry = _manifest(reference_dir)[dataset]
    rename = entry["header"]["rename_map_ckpt_to_port"]
    ignored = set(entry["header"]["checkpoint_keys_ignored_by_port"])
    port = {k for k in entry["port_state_dict"] if not k.endswith("num_batches_tracked")}
    ours = {rename.get(k, k) for k in _meta_net(dataset).state_dict() if k not in ignored}
    assert ours == port


@pytest.mark.parametrize("dataset", DATASETS)
def test_strict_load_names_missing_and_unexpected_keys(dataset: str) -> None:
    net = _meta_net(dataset)
    state = {k: torch.empty(v.shape, device="meta") for k, v in net.state_dict().items()}
    state["decoder.conv3.4.weight"] = state.pop("decoder.conv3.3.weight")  # the port's renamed key
    with pytest.raises(ValueError, match=r"decoder\.conv3\.3\.weight.*decoder\.conv3\.4\.weight"):
        checkpoint.load_strict(net, state)
    with pytest.raises(KeyError, match="module"):
        checkpoint.strip_prefix({"conv1.weight": torch.zeros(1)})


def test_tiny_config_builds_the_same_branches_small() -> None:
    for dataset in DATASETS:
        cfg = config_for(dataset, tiny=True)  # type: ignore[arg-type]
        net = SCHPNet(cfg).eval()
        full_keys = {k.split(".")[0] for k in _meta_net(dataset).state_dict()}
        assert {k.split(".")[0] for k in net.state_dict()} == full_keys
        assert sum(p.numel() for p in net.parameters()) < 1_000_000
        with torch.no_grad():
            out = net(torch.zeros(2, 3, *cfg.input_size))
        assert out.shape == (2, cfg.num_classes, (cfg.input_size[0] + 3) // 4, (cfg.input_size[1] + 3) // 4)


@pytest.mark.reference
@pytest.mark.parametrize("dataset", DATASETS)
def test_recipe_weights_match_reference_checksums(reference_dir: Path, dataset: str) -> None:
    """random_full(seed 0) holds exactly the fixtures' weights, tensor by tensor, after loading."""
    sums = json.loads((reference_dir / "schp" / f"{dataset}_weights_checksums.json").read_text())
    loaded = golden_parser(dataset).net.state_dict()
    digests = {"module." + k: hashlib.sha256(v.cpu().numpy().tobytes()).hexdigest() for k, v in loaded.items()}
    assert {k: v["sha256"] for k, v in sums["tensors"].items()} == digests
    combined = hashlib.sha256("".join(k + digests[k] for k in sorted(digests)).encode()).hexdigest()
    assert combined == sums["combined_sha256"]


@pytest.mark.reference
@pytest.mark.parametrize("dataset", DATASETS)
def test_stagewise_parity_with_original(reference_dir: Path, dataset: str) -> None:
    """Every recorded module output and the logits within the README's tolerance
    max|Δ| <= 1e-4 * max|ref| + 1e-6 (first 4 channels and per-channel means)."""
    ref = load_file(str(reference_dir / "schp" / f"{dataset}_stages.safetensors"))
    net = golden_parser(dataset).net
    with torch.inference_mode():
        stages = net.stages(ref["input_tensor"])

    def close(ours: torch.Tensor, theirs: torch.Tensor, name: str) -> None:
        assert ours.shape == theirs.shape, name
        err = (ours - theirs).abs().max().item()
        assert err <= 1e-4 * theirs.abs().max().item() + 1e-6, f"{name}: max|Δ| {err}"

    close(stages["logits"], ref["logits"], "logits")
    for name in ("layer1", "layer2", "layer3", "layer4", "context_encoding", "decoder", "edge"):
        close(stages[name][:, :4], ref[f"{name}.ch0_4"], f"{name}.ch0_4")
        close(stages[name].mean(dim=(0, 2, 3)), ref[f"{name}.channel_mean"], f"{name}.channel_mean")


@pytest.mark.parametrize("activation", [True, False])
def test_abn_equals_batchnorm_then_leaky_relu(activation: bool) -> None:
    """InPlaceABNSync at inference == BatchNorm2d(eval) followed by LeakyReLU(0.01) (or nothing)."""
    from pipelines.common.parsing.network import ABN

    torch.manual_seed(0)
    abn, bn = ABN(6, activation=activation), torch.nn.BatchNorm2d(6).eval()
    for t in (abn, bn):
        t.weight.data = torch.linspace(0.5, 1.5, 6)
        t.bias.data = torch.linspace(-0.2, 0.3, 6)
        t.running_mean.copy_(torch.linspace(-1, 1, 6))
        t.running_var.copy_(torch.linspace(0.5, 2, 6))
    x = torch.randn(2, 6, 5, 7)
    expected = torch.nn.functional.leaky_relu(bn(x), 0.01) if activation else bn(x)
    torch.testing.assert_close(abn(x), expected, rtol=0, atol=1e-6)
    assert set(abn.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
