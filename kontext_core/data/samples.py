"""Deterministic sample datasets for the demo, drawn locally (nothing downloaded).

Three datasets, each in the shape a user would bring:
- `subjects200k/`: a Hugging Face dataset stored as parquet in the Subjects200K shape: an `image`
  column with a 2-panel composite (subject on a plain background | subject in a scene) and a
  `description` struct with `description_0` / `description_1` captions;
- `pairs/` and `pairs-eval/`: folder pairs, `edited/` and `reference/` with the same file names,
  captions in `.txt` files beside the edited images (the edit: invert the colours);
- `clean/`: sharp images with captions, to be degraded into deblur references.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from kontext_core.fsutil import atomic_dir

log = logging.getLogger(__name__)

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
    "cyan": (40, 200, 210),
    "pink": (235, 120, 170),
}
SHAPES = ("circle", "square", "triangle", "star")
SCENES = ("stripes", "grid", "gradient", "dots")


def _gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    start = rng.integers(0, 256, 3)
    end = rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, size)[None, :, None]
    angle_mix = rng.uniform(0, 1)
    ramp = angle_mix * t + (1 - angle_mix) * np.transpose(t, (1, 0, 2))
    return (start * (1 - ramp) + end * ramp).astype(np.uint8)


def _scene(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    base = Image.fromarray(_gradient(size, rng))
    draw = ImageDraw.Draw(base)
    ink = tuple(int(c) for c in rng.integers(0, 256, 3))
    step = int(rng.integers(8, 16))
    if kind == "stripes":
        for x in range(0, size, step * 2):
            draw.rectangle([x, 0, x + step - 1, size], fill=ink)
    elif kind == "grid":
        for x in range(0, size, step):
            draw.line([x, 0, x, size], fill=ink, width=2)
            draw.line([0, x, size, x], fill=ink, width=2)
    elif kind == "dots":
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=ink)
    return base


def _draw_shape(img: Image.Image, shape: str, colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    size = img.width
    draw = ImageDraw.Draw(img)
    radius = int(size * rng.uniform(0.22, 0.32))
    cx = int(size / 2 + rng.integers(-size // 10, size // 10 + 1))
    cy = int(size / 2 + rng.integers(-size // 10, size // 10 + 1))
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(box, fill=colour, outline=(0, 0, 0), width=2)
    elif shape == "square":
        draw.rectangle(box, fill=colour, outline=(0, 0, 0), width=2)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)
    else:
        points = []
        for k in range(10):
            r = radius if k % 2 == 0 else radius * 0.45
            a = np.pi / 2 + k * np.pi / 5
            points.append((cx + r * np.cos(a), cy - r * np.sin(a)))
        draw.polygon(points, fill=colour)


def _subject(index: int, rng: np.random.Generator) -> tuple[str, str, tuple[int, int, int]]:
    colour_name = list(COLOURS)[index % len(COLOURS)]
    shape = SHAPES[(index // 2) % len(SHAPES)]
    return colour_name, shape, COLOURS[colour_name]


def _shapes_picture(index: int, size: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
    colour_name, shape, colour = _subject(index, rng)
    scene = SCENES[index % len(SCENES)]
    img = _scene(scene, size, rng)
    _draw_shape(img, shape, colour, rng)
    return img, f"a {colour_name} {shape} over a {scene} background"


def subjects_rows(count: int, size: int, rng: np.random.Generator) -> list[dict]:
    """Subjects200K-like rows: a two-panel composite `image` (subject on a plain background | the
    subject in a scene), the `item` and the two panels' captions."""
    rows = []
    for index in range(count):
        colour_name, shape, colour = _subject(index, rng)
        left = Image.new("RGB", (size, size), (245, 245, 245))
        _draw_shape(left, shape, colour, rng)
        scene = SCENES[(index + 1) % len(SCENES)]
        right = _scene(scene, size, rng)
        _draw_shape(right, shape, colour, rng)
        composite = Image.new("RGB", (2 * size, size))
        composite.paste(left, (0, 0))
        composite.paste(right, (size, 0))
        rows.append(
            {
                "image": composite,
                "item": f"{colour_name} {shape}",
                "description_0": f"a {colour_name} {shape} on a plain white background",
                "description_1": f"put the {colour_name} {shape} in a {scene} scene",
            }
        )
    return rows


def write_subjects_parquet(out_dir: Path, count: int, size: int, seed: int) -> Path:
    """Subjects200K-shaped parquet: composite `image` and a `description` struct."""
    import datasets

    rows = subjects_rows(count, size, np.random.default_rng(seed))
    images = [row["image"] for row in rows]
    descriptions = [{"description_0": row["description_0"], "description_1": row["description_1"]} for row in rows]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "description": {
                "description_0": datasets.Value("string"),
                "description_1": datasets.Value("string"),
            },
        }
    )
    table = datasets.Dataset.from_dict({"image": images, "description": descriptions}, features=features)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / "train-00000-of-00001.parquet"
    table.to_parquet(str(target))
    return target


def write_edit_pairs(out_dir: Path, count: int, size: int, seed: int, offset: int = 0) -> None:
    """`edited/` and `reference/` folders; the edit inverts the colours of the reference."""
    rng = np.random.default_rng(seed)
    (out_dir / "edited").mkdir(parents=True, exist_ok=True)
    (out_dir / "reference").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        reference, description = _shapes_picture(index + offset, size, rng)
        edited = ImageOps.invert(reference)
        name = f"pair_{index + offset:03d}"
        reference.save(out_dir / "reference" / f"{name}.png")
        edited.save(out_dir / "edited" / f"{name}.png")
        (out_dir / "edited" / f"{name}.txt").write_text(f"invert the colours of {description}\n")


def write_clean_images(out_dir: Path, count: int, size: int, seed: int) -> None:
    """Sharp, detailed pictures (fine grids and dots) that blur visibly when degraded."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        img, description = _shapes_picture(index + 3, size, rng)
        img.save(out_dir / f"clean_{index:03d}.png")
        (out_dir / f"clean_{index:03d}.txt").write_text(f"{description}\n")


def write_sample_data(out_dir: Path, count: int = 8, size: int = 96, seed: int = 0) -> Path:
    """Write all sample datasets under `out_dir` (atomically, as one directory)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_subjects_parquet(tmp / "subjects200k", count, size, seed)
        write_edit_pairs(tmp / "pairs", count, size, seed + 1)
        write_edit_pairs(tmp / "pairs-eval", 2, size, seed + 2, offset=count)
        write_clean_images(tmp / "clean", count, size, seed + 3)
    log.info("sample data written to %s", out_dir)
    return out_dir
