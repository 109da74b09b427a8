"""CatVTON's AutoMasker rules: the agnostic mask of one ``cloth_type`` from three label maps.

A pure function of a DensePose fine-part map (I, 0..24), an SCHP-LIP map (20 classes) and an
SCHP-ATR map (18 classes), all at the person image size. It follows CatVTON's
``AutoMasker.cloth_agnostic_mask`` step by step (tables and steps in
``shared/reference/catvton/automasker_rules.json``) and is bit-exact with it: every step is an
integer or cv2 operation. The later radius-9 PIL blur and 0.5 binarisation belong to the
pipeline, not here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import cv2
import numpy as np

from pipelines.common.parsing.config import ATR_LABELS, LIP_LABELS

ClothType = Literal["upper", "lower", "overall", "inner", "outer"]
CLOTH_TYPES: tuple[ClothType, ...] = ("upper", "lower", "overall", "inner", "outer")

DENSE_INDEX_MAP: dict[str, tuple[int, ...]] = {
    "background": (0,),
    "torso": (1, 2),
    "right hand": (3,),
    "left hand": (4,),
    "right foot": (5,),
    "left foot": (6,),
    "right thigh": (7, 9),
    "left thigh": (8, 10),
    "right leg": (11, 13),
    "left leg": (12, 14),
    "left big arm": (15, 17),
    "right big arm": (16, 18),
    "left forearm": (19, 21),
    "right forearm": (20, 22),
    "face": (23, 24),
    "thighs": (7, 8, 9, 10),
    "legs": (11, 12, 13, 14),
    "hands": (3, 4),
    "feet": (5, 6),
    "big arms": (15, 16, 17, 18),
    "forearms": (19, 20, 21, 22),
}

LIP_MAPPING = {name: (i,) for i, name in enumerate(LIP_LABELS)}
ATR_MAPPING = {name: (i,) for i, name in enumerate(ATR_LABELS)}

PROTECT_BODY_PARTS: dict[str, tuple[str, ...]] = {
    "upper": ("Left-leg", "Right-leg"),
    "lower": ("Right-arm", "Left-arm", "Face"),
    "overall": (),
    "inner": ("Left-leg", "Right-leg"),
    "outer": ("Left-leg", "Right-leg"),
}
PROTECT_CLOTH_PARTS: dict[str, dict[str, tuple[str, ...]]] = {
    "upper": {"ATR": ("Skirt", "Pants"), "LIP": ("Skirt", "Pants")},
    "lower": {"ATR": ("Upper-clothes",), "LIP": ("Upper-clothes", "Coat")},
    "overall": {"ATR": (), "LIP": ()},
    "inner": {
        "ATR": ("Dress", "Coat", "Skirt", "Pants"),
        "LIP": ("Dress", "Coat", "Skirt", "Pants", "Jumpsuits"),
    },
    "outer": {
        "ATR": ("Dress", "Pants", "Skirt"),
        "LIP": ("Upper-clothes", "Dress", "Pants", "Skirt", "Jumpsuits"),
    },
}
MASK_CLOTH_PARTS: dict[str, tuple[str, ...]] = {
    "upper": ("Upper-clothes", "Coat", "Dress", "Jumpsuits"),
    "lower": ("Pants", "Skirt", "Dress", "Jumpsuits"),
    "overall": ("Upper-clothes", "Dress", "Pants", "Skirt", "Coat", "Jumpsuits"),
    "inner": ("Upper-clothes",),
    "outer": ("Coat",),
}
MASK_DENSE_PARTS: dict[str, tuple[str, ...]] = {
    "upper": ("torso", "big arms", "forearms"),
    "lower": ("thighs", "legs"),
    "overall": ("torso", "thighs", "legs", "big arms", "forearms"),
    "inner": ("torso",),
    "outer": ("torso", "big arms", "forearms"),
}
ACCESSORY_PARTS = ("Hat", "Glove", "Sunglasses", "Bag", "Left-shoe", "Right-shoe", "Scarf", "Socks")
LIMBS = ("Left-arm", "Right-arm", "Left-leg", "Right-leg")


def part_mask(labels: np.ndarray, parts: Iterable[str], mapping: Mapping[str, tuple[int, ...]]) -> np.ndarray:
    """Boolean mask of the pixels whose label is one of ``parts``; names absent from ``mapping`` are
    skipped (ATR has no Coat, Glove, Socks or Jumpsuits), as in the original."""
    ids = [i for name in parts if name in mapping for i in mapping[name]]
    return np.isin(labels, ids)


def odd_kernel_sizes(width: int, height: int) -> tuple[int, int]:
    """(dilation kernel, Gaussian kernel): ``max(w,h)//250`` and ``max(w,h)//25``, made odd."""
    longest = max(width, height)
    dilate, blur = longest // 250, longest // 25
    return dilate | 1, blur | 1


def convex_hull_fill(mask: np.ndarray) -> np.ndarray:
    """Union of the filled convex hulls of the external contours of a boolean mask."""
    binary = mask.astype(np.uint8) * 255
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hulls = np.zeros_like(binary)
    for contour in contours:
        # One fillPoly per hull, OR-ed, like the original (a single call would apply even-odd rules).
        hulls |= cv2.fillPoly(np.zeros_like(binary), [cv2.convexHull(contour)], 255)
    return hulls > 0


def cloth_agnostic_mask(
    densepose: np.ndarray, schp_lip: np.ndarray, schp_atr: np.ndarray, cloth_type: ClothType
) -> np.ndarray:
    """The AutoMasker mask (uint8 HxW, values 0/255; 255 = region to repaint).

    ``densepose``, ``schp_lip`` and ``schp_atr`` are uint8 label maps of the same HxW size.
    """
    if cloth_type not in CLOTH_TYPES:
        raise ValueError(f"cloth_type must be one of {CLOTH_TYPES}, got {cloth_type!r}")
    densepose, lip, atr = (np.asarray(m) for m in (densepose, schp_lip, schp_atr))
    if not densepose.shape == lip.shape == atr.shape or densepose.ndim != 2:
        raise ValueError(f"label maps differ in shape: {densepose.shape}, {lip.shape}, {atr.shape}")
    height, width = densepose.shape
    k, g = odd_kernel_sizes(width, height)
    kernel = np.ones((k, k), np.uint8)

    def lip_or_atr(parts: Iterable[str]) -> np.ndarray:
        parts = tuple(parts)
        return part_mask(lip, parts, LIP_MAPPING) | part_mask(atr, parts, ATR_MAPPING)

    def dilate(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
        return cv2.dilate(mask.astype(np.uint8), kernel, iterations=iterations) > 0

    # Strong protect: hands and feet (DensePose, dilated) where a parser sees a limb, and the face.
    hands_feet = dilate(part_mask(densepose, ("hands", "feet"), DENSE_INDEX_MAP)) & lip_or_atr(LIMBS)
    strong_protect = hands_feet | part_mask(lip, ("Face",), LIP_MAPPING)

    # Weak protect: body parts and clothes this cloth type keeps, hair, accessories.
    weak_protect = (
        lip_or_atr(PROTECT_BODY_PARTS[cloth_type])
        | part_mask(lip, PROTECT_CLOTH_PARTS[cloth_type]["LIP"], LIP_MAPPING)
        | part_mask(atr, PROTECT_CLOTH_PARTS[cloth_type]["ATR"], ATR_MAPPING)
        | lip_or_atr(("Hair",))
        | strong_protect
        | lip_or_atr(ACCESSORY_PARTS)
    )

    strong_mask = lip_or_atr(MASK_CLOTH_PARTS[cloth_type])
    background = part_mask(lip, ("Background",), LIP_MAPPING) & part_mask(atr, ("Background",), ATR_MAPPING)

    # DensePose body area, grown at quarter resolution (the 4x round trip is nearest-neighbour). The
    # original upscales by fx=4 and so fails unless w and h are multiples of 4; resizing to (w, h)
    # is identical for those sizes and still defined for others.
    dense = part_mask(densepose, MASK_DENSE_PARTS[cloth_type], DENSE_INDEX_MAP).astype(np.uint8)
    dense = cv2.resize(dense, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_NEAREST)
    dense = cv2.dilate(dense, kernel, iterations=2)
    dense = cv2.resize(dense, (width, height), interpolation=cv2.INTER_NEAREST) > 0

    mask = (~weak_protect & ~background) | dense
    mask = convex_hull_fill(mask) & ~weak_protect
    blurred = cv2.GaussianBlur(mask.astype(np.uint8) * 255, (g, g), 0)
    mask = blurred >= 25
    mask = (mask | strong_mask) & ~strong_protect
    return dilate(mask).astype(np.uint8) * 255
