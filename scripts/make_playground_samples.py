"""Make the playground's sample images: ``python scripts/make_playground_samples.py``.

``portrait.jpg`` is ``skimage.data.astronaut()`` (NASA's portrait of Eileen Collins, public domain,
shipped with scikit-image): a real photo, so that real-weight face and pose models find someone, and the
picture the ``--tiny`` face detectors' tests use (they fire on it). The others are drawn shapes (a figure,
a T-shirt, a face) for the garment and extra inputs.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "server" / "playground" / "samples"
SKIN, HAIR, SHIRT, TROUSERS = (224, 172, 140), (70, 45, 30), (52, 110, 190), (60, 60, 70)


def gradient(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / max(1, h - 1)
        draw.line([(0, y), (w, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    return img


def person() -> Image.Image:
    img = gradient((192, 256), (235, 238, 242), (200, 205, 215))
    d = ImageDraw.Draw(img)
    d.ellipse((76, 18, 116, 62), fill=SKIN)  # head
    d.pieslice((74, 14, 118, 50), 180, 360, fill=HAIR)
    d.rectangle((90, 60, 102, 70), fill=SKIN)  # neck
    d.polygon([(62, 72), (130, 72), (124, 150), (68, 150)], fill=SHIRT)  # torso
    d.line([(64, 76), (44, 150)], fill=SHIRT, width=14)  # arms
    d.line([(128, 76), (148, 150)], fill=SHIRT, width=14)
    d.ellipse((36, 146, 52, 162), fill=SKIN)
    d.ellipse((140, 146, 156, 162), fill=SKIN)
    d.rectangle((70, 150, 94, 240), fill=TROUSERS)  # legs
    d.rectangle((98, 150, 122, 240), fill=TROUSERS)
    return img


def garment() -> Image.Image:
    img = Image.new("RGB", (192, 256), (246, 246, 246))
    d = ImageDraw.Draw(img)
    body = [(40, 60), (70, 44), (122, 44), (152, 60), (176, 104), (148, 118), (140, 100), (140, 220), (52, 220),
            (52, 100), (44, 118), (16, 104)]  # fmt: skip
    d.polygon(body, fill=(200, 60, 70), outline=(150, 40, 50))
    d.arc((76, 30, 116, 66), 0, 180, fill=(150, 40, 50), width=4)  # collar
    return img


def face() -> Image.Image:
    img = gradient((192, 192), (210, 225, 240), (170, 190, 215))
    d = ImageDraw.Draw(img)
    d.ellipse((46, 30, 146, 160), fill=SKIN)
    d.pieslice((42, 22, 150, 110), 180, 360, fill=HAIR)
    for x in (74, 118):
        d.ellipse((x - 9, 84, x + 9, 96), fill="white")
        d.ellipse((x - 4, 86, x + 4, 94), fill=(60, 40, 30))
    d.line([(96, 98), (92, 118), (100, 118)], fill=(180, 120, 100), width=2)
    d.arc((76, 116, 116, 140), 20, 160, fill=(160, 60, 60), width=3)
    return img


def portrait() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())  # 512 x 512, head and shoulders


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, draw in (("person", person), ("garment", garment), ("face", face)):
        draw().save(OUT / f"{name}.png", optimize=True)
    portrait().save(OUT / "portrait.jpg", quality=75, optimize=True)


if __name__ == "__main__":
    main()
