"""Generated references for restoration tasks (SimpleTuner's `conditioning: [...]` generators).

Each generator is deterministic per (seed, file key) so a re-run reproduces the same pixels.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, ImageFilter

from kontext_core.config import ConditioningGenerator


def generated_dataset_id(source_id: str, generator: ConditioningGenerator) -> str:
    return f"{source_id}_conditioning_{generator.type}"


def item_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def pick_caption(generator: ConditioningGenerator, seed: int, key: str) -> str | None:
    """A caption from the generator's `captions` (string or list), or None to keep the edit's."""
    captions = generator.captions
    if captions is None or captions is False or captions is True:
        return None
    if isinstance(captions, str):
        return captions
    if not captions:
        return None
    return captions[item_seed(seed, "caption:" + key) % len(captions)]


def _add_noise(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    pixels = pixels + rng.normal(0.0, level, pixels.shape).astype(np.float32)
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def superresolution(img: Image.Image, generator: ConditioningGenerator, rng: np.random.Generator) -> Image.Image:
    radius = generator.blur_radius
    if generator.blur_type in ("gaussian", "both"):
        img = img.filter(ImageFilter.GaussianBlur(radius))
    if generator.blur_type in ("box", "both"):
        img = img.filter(ImageFilter.BoxBlur(radius))
    if generator.add_noise and generator.noise_level > 0:
        img = _add_noise(img, generator.noise_level, rng)
    return img


def jpeg_artifacts(img: Image.Image, generator: ConditioningGenerator, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=int(generator.quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


GENERATORS = {"superresolution": superresolution, "jpeg_artifacts": jpeg_artifacts}


def degrade(img: Image.Image, generator: ConditioningGenerator, seed: int, key: str) -> Image.Image:
    rng = np.random.default_rng(item_seed(seed, key))
    return GENERATORS[generator.type](img.convert("RGB"), generator, rng)
