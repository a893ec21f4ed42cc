"""Generated references (SimpleTuner's `conditioning: [...]` generators that need no model).

Each generator is deterministic per (seed, generated set, file key): a re-run reproduces the same
pixels, and `generated_key` names the output by the source content, the generator parameters and
the seed, so existing outputs are reused (an interrupted run resumes where it stopped).
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from kontext_core.config import ConditioningGenerator
from kontext_core.config.generators import LATER_OPTIONS
from kontext_core.data.edges import canny_edges
from kontext_core.data.masks import random_mask_image

# 4:4:4, 4:2:2, 4:2:0 in PIL's numbering.
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
# quality_mode "random": any quality in this range (a visible but not destroyed image).
# quality_mode "random" without a quality_list: SimpleTuner's default list.
RANDOM_QUALITIES = (10, 20, 30, 40)
JPEG_MAX_QUALITY = 95  # SimpleTuner clamps the decayed qualities of later rounds to 1..95


def generated_dataset_id(source_id: str, generator: ConditioningGenerator) -> str:
    return f"{source_id}_conditioning_{generator.type}"


def item_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def generator_spec(generator: ConditioningGenerator) -> dict[str, Any]:
    """The generator's parameters as plain JSON (what the pair table stores and keys hash)."""
    spec = json.loads(generator.model_dump_json())
    defaults = json.loads(ConditioningGenerator(type=generator.type).model_dump_json())
    return {k: v for k, v in spec.items() if not (k in LATER_OPTIONS and v == defaults[k])}


def generated_key(source_digest: str, generator: ConditioningGenerator, seed: int, key: str) -> str:
    """Content address of one generated image (captions do not change pixels, so they are left out)."""
    spec = {k: v for k, v in generator_spec(generator).items() if k != "captions"}
    material = json.dumps({"source": source_digest, "generator": spec, "seed": seed, "key": key}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def pick_caption(generator: ConditioningGenerator, seed: int, key: str) -> str | None:
    """A caption from the generator's `captions` (string or list), or None to keep the edit's."""
    choices = generator.caption_choices
    if not choices:
        return None
    return choices[item_seed(seed, "caption:" + key) % len(choices)]


def _add_noise(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    pixels = pixels + rng.normal(0.0, level, pixels.shape).astype(np.float32)
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def _jpeg(
    img: Image.Image,
    quality: int,
    subsampling: int | str | None = None,
    optimize: bool = False,
    progressive: bool = False,
) -> Image.Image:
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": int(quality)}
    if optimize or progressive:
        options.update(optimize=optimize, progressive=progressive)
    if subsampling is not None:
        options["subsampling"] = SUBSAMPLING.get(str(subsampling), subsampling)
    img.save(buffer, format="JPEG", **options)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def superresolution(img: Image.Image, generator: ConditioningGenerator, rng: np.random.Generator) -> Image.Image:
    """Blur, optionally downscale, add noise and JPEG-compress, then return at the source size."""
    size = img.size
    radius = generator.blur_radius
    if radius > 0 and generator.blur_type in ("gaussian", "both"):
        img = img.filter(ImageFilter.GaussianBlur(radius))
    if radius > 0 and generator.blur_type in ("box", "both"):
        img = img.filter(ImageFilter.BoxBlur(radius))
    if generator.downscale_factor > 1:
        small = (
            max(1, round(size[0] / generator.downscale_factor)),
            max(1, round(size[1] / generator.downscale_factor)),
        )
        img = img.resize(small, Image.BICUBIC)
    if generator.add_noise and generator.noise_level > 0:
        img = _add_noise(img, generator.noise_level, rng)
    if generator.jpeg_quality is not None:
        img = _jpeg(img, generator.jpeg_quality)
    # Back to the source size, so a strict reference takes its edit image's crop plan unchanged.
    return img.resize(size, Image.BICUBIC) if img.size != size else img


def jpeg_quality(generator: ConditioningGenerator, rng: np.random.Generator) -> int:
    """The first-round quality under `quality_mode`."""
    mode = generator.quality_mode
    if mode == "range":
        low, high = generator.quality_range
        return int(rng.integers(low, high + 1))
    if mode in ("random", "list"):
        # SimpleTuner's "random": one of quality_list (its default list when none is given).
        choices = generator.quality_list or RANDOM_QUALITIES
        return int(choices[int(rng.integers(len(choices)))])
    return generator.quality


def jpeg_artifacts(img: Image.Image, generator: ConditioningGenerator, rng: np.random.Generator) -> Image.Image:
    """Optional pre-blur and noise, `compression_rounds` JPEG rounds with decaying quality, then
    optional noise on the 8x8 block borders (`enhance_blocks`)."""
    if generator.pre_blur:
        # pre_blur: true blurs at pre_blur_radius; a number is that radius (this pipeline's older form).
        radius = generator.pre_blur_radius if generator.pre_blur is True else float(generator.pre_blur)
        img = img.filter(ImageFilter.GaussianBlur(radius))
    if generator.add_noise and generator.noise_level > 0 and "add_noise" in generator.model_fields_set:
        img = _add_noise(img, generator.noise_level, rng)
    quality = jpeg_quality(generator, rng)
    for round_index in range(generator.compression_rounds):
        round_quality = quality
        if round_index:
            round_quality = max(1, min(JPEG_MAX_QUALITY, int(quality * generator.quality_decay**round_index)))
        img = _jpeg(img, round_quality, generator.subsampling, generator.optimize, generator.progressive)
    if generator.enhance_blocks and generator.block_noise_level > 0:
        img = _block_noise(img, generator.block_noise_level, rng)
    return img


def _block_noise(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    borders = np.zeros(pixels.shape[:2], dtype=bool)
    borders[::8, :] = True
    borders[:, ::8] = True
    noise = rng.normal(0.0, level, pixels.shape).astype(np.float32) * borders[:, :, None]
    return Image.fromarray((np.clip(pixels + noise, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def canny(img: Image.Image, generator: ConditioningGenerator, rng: np.random.Generator) -> Image.Image:
    """Edges of the grey image, white on black, as an RGB image of the source size."""
    edges = canny_edges(np.asarray(img.convert("L")), generator.low_threshold, generator.high_threshold)
    return Image.fromarray(edges).convert("RGB")


def random_masks(img: Image.Image, generator: ConditioningGenerator, rng: np.random.Generator) -> Image.Image:
    """The random mask itself (`output_mode: mask`) or the image painted white under it (`masked_image`)."""
    mask = random_mask_image(img.size, generator, rng)
    if generator.output_mode == "mask":
        return mask.convert("RGB")
    weight = np.asarray(mask, dtype=np.float32)[:, :, None] / 255.0
    pixels = np.asarray(img, dtype=np.float32)
    return Image.fromarray((pixels * (1.0 - weight) + 255.0 * weight).astype(np.uint8))


GENERATORS = {
    "superresolution": superresolution,
    "jpeg_artifacts": jpeg_artifacts,
    "canny": canny,
    "random_masks": random_masks,
}


def degrade(img: Image.Image, generator: ConditioningGenerator, seed: int, key: str) -> Image.Image:
    rng = np.random.default_rng(item_seed(seed, f"{generator.type}:{key}"))
    return GENERATORS[generator.type](img.convert("RGB"), generator, rng)
