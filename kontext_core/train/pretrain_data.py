"""The images the tiny model is pretrained on: the sample datasets as written by the `init` stage.

Everything under `data/samples` except `pairs-eval/` is pretraining material (Subjects200K
composites split into their two panels, the folder pairs' references and edits, the clean images);
`pairs-eval/` is held out, so the VAE's reconstruction quality is measured on images it never saw.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from kontext_core.data.buckets import resize_and_crop

HELD_OUT = "pairs-eval"


@dataclass
class PretrainImages:
    train: list[Image.Image]
    captions: list[str]  # one per training image
    held_out: list[Image.Image]


def _caption_beside(path: Path) -> str:
    """A picture's caption file, or the one of its edited twin (references have none)."""
    for candidate in (path.with_suffix(".txt"), path.parent.parent / "edited" / f"{path.stem}.txt"):
        if candidate.exists():
            return candidate.read_text().strip()
    return ""


def _composite_panels(parquet: Path) -> list[tuple[Image.Image, str]]:
    """Both panels of every Subjects200K-shaped composite, with the caption that describes each."""
    table = pq.read_table(parquet, columns=["image", "description"])
    panels = []
    rows = zip(table.column("image").to_pylist(), table.column("description").to_pylist(), strict=True)
    for image, description in rows:
        composite = Image.open(io.BytesIO(image["bytes"])).convert("RGB")
        half = composite.width // 2
        panels.append((composite.crop((0, 0, half, composite.height)), description["description_0"]))
        panels.append((composite.crop((half, 0, 2 * half, composite.height)), description["description_1"]))
    return panels


def load_pretrain_images(samples_dir: Path) -> PretrainImages:
    """Training pictures with captions and the held-out pictures, in a fixed (sorted) order."""
    samples_dir = Path(samples_dir)
    train: list[Image.Image] = []
    captions: list[str] = []
    held_out: list[Image.Image] = []
    for path in sorted(samples_dir.rglob("*.png")):
        with Image.open(path) as img:
            picture = img.convert("RGB")
        if path.relative_to(samples_dir).parts[0] == HELD_OUT:
            held_out.append(picture)
            continue
        train.append(picture)
        captions.append(_caption_beside(path))
    for parquet in sorted(samples_dir.rglob("*.parquet")):
        for picture, caption in _composite_panels(parquet):
            train.append(picture)
            captions.append(caption)
    if not train or not held_out:
        raise ValueError(f"pretraining needs sample images and a held-out {HELD_OUT}/ set under {samples_dir}")
    return PretrainImages(train=train, captions=captions, held_out=held_out)


def to_pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    """(N, 3, size, size) in [-1, 1], each image resized and centre-cropped like the data stages do."""
    arrays = [np.asarray(resize_and_crop(img, (size, size)), dtype=np.float32) for img in images]
    return torch.from_numpy(np.stack(arrays) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def augmented_views(images: list[Image.Image], size: int, generator: torch.Generator, views: int) -> torch.Tensor:
    """`views` variants per image: the plain resize, then random crops of an enlarged copy, some
    mirrored, so a few dozen pictures teach more than a few dozen exact inputs."""
    out = [to_pixels(images, size)]
    big = to_pixels(images, size + size // 4)
    margin = big.shape[-1] - size
    for _ in range(views - 1):
        crops = []
        for pixels in big:
            top, left = (int(v) for v in torch.randint(0, margin + 1, (2,), generator=generator))
            crop = pixels[:, top : top + size, left : left + size]
            if torch.rand(1, generator=generator).item() < 0.5:
                crop = crop.flip(-1)
            crops.append(crop)
        out.append(torch.stack(crops))
    return torch.cat(out)
