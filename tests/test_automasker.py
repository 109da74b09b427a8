"""AutoMasker rules against the masks CatVTON's own code produced (shared/reference/schp/automasker)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.catvton.automasker import CLOTH_TYPES, cloth_agnostic_mask, odd_kernel_sizes

pytestmark = pytest.mark.reference


def _read(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def _cases(reference_dir: Path) -> list[tuple[Path, dict]]:
    root = reference_dir / "schp" / "automasker"
    index = json.loads((root / "index.json").read_text())
    return [(root / scene, entry) for scene, entry in sorted(index.items())]


def test_fixture_index_covers_both_scenes_and_sizes(reference_dir: Path) -> None:
    names = {case.name for case, _ in _cases(reference_dir)}
    assert names == {
        "tshirt_pants_768x1024",
        "tshirt_pants_384x512",
        "dress_coat_768x1024",
        "dress_coat_384x512",
    }


@pytest.mark.parametrize("cloth_type", CLOTH_TYPES)
def test_masks_equal_original_bit_for_bit(reference_dir: Path, cloth_type: str) -> None:
    for case, entry in _cases(reference_dir):
        densepose, lip, atr = (_read(case / f"{n}.png") for n in ("densepose", "schp_lip", "schp_atr"))
        mask = cloth_agnostic_mask(densepose, lip, atr, cloth_type)
        expected = _read(case / f"mask_{cloth_type}.png")
        assert mask.dtype == np.uint8 and mask.shape == expected.shape
        differing = int((mask != expected).sum())
        assert differing == 0, f"{case.name}/{cloth_type}: {differing} pixels differ"
        assert hashlib.sha256(mask.tobytes()).hexdigest() == entry["masks"][cloth_type]["sha256"]


def test_cloth_types_give_different_masks(reference_dir: Path) -> None:
    case, _ = _cases(reference_dir)[0]
    maps = [_read(case / f"{n}.png") for n in ("densepose", "schp_lip", "schp_atr")]
    masks = {t: cloth_agnostic_mask(*maps, t) for t in CLOTH_TYPES}
    assert len({m.tobytes() for m in masks.values()}) == len(CLOTH_TYPES)


def test_kernel_sizes_follow_image_size() -> None:
    assert odd_kernel_sizes(768, 1024) == (5, 41)
    assert odd_kernel_sizes(384, 512) == (3, 21)
    assert odd_kernel_sizes(1024, 1000) == (5, 41)


def test_face_is_protected_and_background_stays_unmasked() -> None:
    h, w = 256, 192
    dense = np.zeros((h, w), np.uint8)
    lip = np.zeros((h, w), np.uint8)
    atr = np.zeros((h, w), np.uint8)
    dense[60:200, 50:140] = 1  # torso
    lip[60:200, 50:140] = 5  # Upper-clothes
    atr[60:200, 50:140] = 4
    lip[20:60, 80:110] = 13  # Face
    mask = cloth_agnostic_mask(dense, lip, atr, "upper")
    assert mask[130, 95] == 255
    assert mask[30, 95] == 0
    assert mask[5, 5] == 0 and mask[250, 185] == 0


def test_rejects_unknown_cloth_type_and_mismatched_shapes() -> None:
    a = np.zeros((64, 48), np.uint8)
    with pytest.raises(ValueError):
        cloth_agnostic_mask(a, a, a, "hat")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cloth_agnostic_mask(a, a, np.zeros((64, 44), np.uint8), "upper")


def test_sizes_not_divisible_by_four_keep_their_shape() -> None:
    h, w = 203, 149
    dense = np.zeros((h, w), np.uint8)
    dense[50:150, 40:110] = 1
    lip = np.where(dense > 0, 5, 0).astype(np.uint8)
    atr = np.where(dense > 0, 4, 0).astype(np.uint8)
    mask = cloth_agnostic_mask(dense, lip, atr, "overall")
    assert mask.shape == (h, w)
    assert mask[100, 75] == 255 and mask[5, 5] == 0
