"""SCHP parser end to end: affine preprocessing, label maps in image space, batching, real-weight loading."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pipelines.common.parsing import checkpoint
from pipelines.common.parsing.config import config_for
from pipelines.common.parsing.network import SCHPNet
from pipelines.common.parsing.parser import HumanParser, labels_in_image, normalize, prepare_input
from pipelines.contract import WeightSource
from tests.support.schp import golden_parser, release_golden_parsers
from weights import MissingWeights
from weights.convert import run_conversion

DATASETS = ("lip", "atr")


@pytest.fixture(scope="module", autouse=True)
def _free_full_size_parsers() -> Iterator[None]:
    yield
    release_golden_parsers()


def _person(reference_dir: Path) -> Image.Image:
    return Image.open(reference_dir / "schp" / "inputs" / "catvton_person_768x1024.png").convert("RGB")


@pytest.mark.reference
@pytest.mark.parametrize("dataset", DATASETS)
def test_preprocessing_matches_original_exactly(reference_dir: Path, dataset: str) -> None:
    root = reference_dir / "schp"
    meta = json.loads((root / f"{dataset}_meta.json").read_text())
    cfg = config_for(dataset)  # type: ignore[arg-type]
    inp = prepare_input(_person(reference_dir), cfg)
    assert np.array_equal(inp.to_input, np.array(meta["affine_image_to_input"]))
    assert np.array_equal(inp.to_image, np.array(meta["affine_input_to_image"]))
    warped = np.array(Image.open(root / f"{dataset}_input_warped_{cfg.input_size[0]}.png"))
    assert np.array_equal(inp.warped, warped)
    tensor = normalize(torch.from_numpy(inp.warped[None]))
    expected = load_file(str(root / f"{dataset}_stages.safetensors"))["input_tensor"]
    torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-6)


@pytest.mark.reference
@pytest.mark.parametrize("dataset", DATASETS)
def test_batched_label_maps_match_original_and_single_runs(reference_dir: Path, dataset: str) -> None:
    """The golden person parsed inside a batch (next to an image of another size) gives the original's
    labels outside its ambiguity mask; the other item's logits equal its single run."""
    root = reference_dir / "schp"
    parser = golden_parser(dataset)
    person = np.array(_person(reference_dir))
    other = np.ascontiguousarray(person[100:612:2, ::-3])  # another size and content
    inputs = [parser.prepare(other), parser.prepare(person)]
    batched = parser.upsampled_logits(inputs)
    single = parser.upsampled_logits(inputs[:1])
    torch.testing.assert_close(batched[:1], single, rtol=0, atol=1e-4 * single.abs().max().item())
    assert np.array_equal(labels_in_image(batched[0].numpy(), inputs[0]), labels_in_image(single[0].numpy(), inputs[0]))

    labels = labels_in_image(batched[1].numpy(), inputs[1])
    expected = np.array(Image.open(root / f"{dataset}_labels_768x1024.png"))
    ambiguous = np.array(Image.open(root / f"{dataset}_labels_ambiguous_gap_lt_1e-3.png")) > 0
    assert labels.shape == expected.shape == (1024, 768) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == set(np.unique(expected))
    assert not np.any((labels != expected) & ~ambiguous)
    assert (labels != expected).sum() <= 10


def _tiny_images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(64, 48), (40, 90), (77, 77), (130, 61)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("dataset", DATASETS)
def test_tiny_batched_equals_single(dataset: str) -> None:
    parser = HumanParser.load(dataset, WeightSource.tiny(3))  # type: ignore[arg-type]
    images = _tiny_images()
    inputs = [parser.prepare(im) for im in images]
    batched = parser.upsampled_logits(inputs)
    for i, inp in enumerate(inputs):
        single = parser.upsampled_logits([inp])
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-5, atol=1e-5)
    maps = parser(images)
    assert [m.shape for m in maps] == [im.shape[:2] for im in images]
    for image, labels in zip(images, maps, strict=True):
        assert np.array_equal(labels, parser([image])[0])
        assert labels.max() < parser.config.num_classes


def test_weight_sources_are_seeded_and_distinct() -> None:
    a = HumanParser.load("lip", WeightSource.tiny(1)).net.state_dict()
    b = HumanParser.load("lip", WeightSource.tiny(1)).net.state_dict()
    c = HumanParser.load("lip", WeightSource.tiny(2)).net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert HumanParser.load("atr", WeightSource.tiny()).config.num_classes == 18


def test_parser_runs_in_bfloat16_on_cpu() -> None:
    parser = HumanParser.load("atr", WeightSource.tiny(), dtype="bfloat16")
    images = _tiny_images()[:2]
    assert [m.shape for m in parser(images)] == [im.shape[:2] for im in images]


def test_real_source_reports_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(MissingWeights, match="schp"):
        HumanParser.load("lip", WeightSource.real(tmp_path))


def test_real_weights_convert_once_then_load_strictly(tmp_path: Path) -> None:
    """A full-size upstream-format .pth (legacy serialisation, like the 2019 files) goes through the
    registered `schp` converter to safetensors, and `real` loads it without unpickling."""
    src = tmp_path / "zhengchong" / "CatVTON" / "SCHP" / "exp-schp-201908301523-atr.pth"
    src.parent.mkdir(parents=True)
    with torch.device("meta"):
        shapes = SCHPNet(config_for("atr"))
    ckpt = checkpoint.random_checkpoint(shapes.to_empty(device="cpu"), "schp-atr-seed7")
    torch.save({"state_dict": ckpt, "epoch": 150}, src, _use_new_zipfile_serialization=False)
    with pytest.raises(MissingWeights, match="convert"):
        HumanParser.load("atr", WeightSource.real(tmp_path))

    dst = tmp_path / "converted" / "schp" / "atr.safetensors"
    run_conversion("schp", src, dst)
    state = load_file(str(dst))
    assert set(state) == {k.removeprefix("module.") for k in ckpt}

    parser = HumanParser.load("atr", WeightSource.real(tmp_path))
    loaded = parser.net.state_dict()
    assert all(torch.equal(loaded[k.removeprefix("module.")], v) for k, v in ckpt.items())


def test_converter_rejects_a_checkpoint_with_missing_keys(tmp_path: Path) -> None:
    net = SCHPNet(config_for("lip", tiny=True))
    ckpt = {"module." + k: v for k, v in net.state_dict().items()}
    ckpt["module.fushion.3.weight"] = torch.zeros(20, 256, 1, 1)
    src = tmp_path / "bad.pth"
    torch.save({"state_dict": ckpt}, src)
    with pytest.raises(ValueError, match="missing="):
        run_conversion("schp", src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("classes", [18, 20, 3])
def test_inverse_warp_equals_the_original_per_channel_loop(classes: int) -> None:
    """labels_in_image may warp 4 classes per cv2 call; it must equal SCHP's one-channel-at-a-time loop."""
    cfg = config_for("atr", tiny=True)
    inp = prepare_input(np.zeros((150, 101, 3), np.uint8), cfg)
    logits = np.random.default_rng(classes).standard_normal((classes, *cfg.input_size)).astype(np.float32)
    channels = [
        cv2.warpAffine(c, inp.to_image, (101, 150), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        for c in logits
    ]
    expected = np.argmax(np.stack(channels, axis=2), axis=2)
    labels = labels_in_image(logits, inp)
    assert np.array_equal(labels, expected)


def test_channels_last_gives_the_same_labels() -> None:
    images = _tiny_images()
    plain = HumanParser.load("lip", WeightSource.tiny(5))
    nhwc = HumanParser.load("lip", WeightSource.tiny(5), channels_last=True)
    inputs = [plain.prepare(im) for im in images]
    torch.testing.assert_close(nhwc.upsampled_logits(inputs), plain.upsampled_logits(inputs), rtol=1e-5, atol=1e-5)
