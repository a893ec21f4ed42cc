"""Aspect buckets and crop plans, with SimpleTuner's resolution math.

`resolution_type`:
- `pixel`: `resolution` is the length of the shorter edge.
- `area`: `resolution` is megapixels.
- `pixel_area`: `resolution` is an edge length whose square is the area (1024 -> 1024² pixels).

Bucket edges are multiples of 64 (never below 64) and the aspect ratio is rounded to 2 decimals
first, as SimpleTuner does, so images of nearly the same shape share a bucket. `minimum_image_size`,
`maximum_image_size` and `target_downsample_size` use the same unit as `resolution`.

A crop plan says exactly how to turn the source image into its bucket: an optional pre-downsample,
the resize that covers the bucket, and the crop box. The pair stage writes plans into the pair
table; cache_vae applies them, so a strict reference is cropped with its edit image's plan.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from PIL import Image

from kontext_core.config import DatasetEntry

EDGE_MULTIPLE = 64
RESAMPLE = Image.LANCZOS


def _round_edge(value: float) -> int:
    return max(EDGE_MULTIPLE, int(round(value / EDGE_MULTIPLE)) * EDGE_MULTIPLE)


def _area_pixels(entry: DatasetEntry, value: float) -> float:
    """A resolution-like value of `entry` as a pixel count (for area and pixel_area)."""
    return value * 1e6 if entry.resolution_type == "area" else value**2


def meets_minimum(width: int, height: int, entry: DatasetEntry) -> bool:
    """Whether an image is at least `minimum_image_size` in the entry's resolution unit."""
    if entry.minimum_image_size is None:
        return True
    if entry.resolution_type == "pixel":
        return min(width, height) >= entry.minimum_image_size
    return width * height >= _area_pixels(entry, entry.minimum_image_size)


def downsample_size(width: int, height: int, entry: DatasetEntry) -> tuple[int, int] | None:
    """Size after the `maximum_image_size` -> `target_downsample_size` pre-downsample, or None."""
    if entry.maximum_image_size is None or entry.target_downsample_size is None:
        return None
    if entry.resolution_type == "pixel":
        short = min(width, height)
        if short <= entry.maximum_image_size:
            return None
        scale = entry.target_downsample_size / short
    else:
        if width * height <= _area_pixels(entry, entry.maximum_image_size):
            return None
        scale = math.sqrt(_area_pixels(entry, entry.target_downsample_size) / (width * height))
    if scale >= 1:
        return None
    return max(1, round(width * scale)), max(1, round(height * scale))


def _bucket_choices(entry: DatasetEntry) -> tuple[list[float], list[float]]:
    """`crop_aspect_buckets` as (aspect ratios, weights): plain numbers weigh the same."""
    aspects, weights = [], []
    for bucket in entry.crop_aspect_buckets or []:
        if isinstance(bucket, dict):
            aspects.append(float(bucket["aspect_bucket"]))
            weights.append(float(bucket["weight"]))
        else:
            aspects.append(float(bucket))
            weights.append(1.0)
    return aspects, weights


def aspect_ratio(width: int, height: int, entry: DatasetEntry, seed: int = 0, key: str = "") -> float:
    """The bucket's aspect ratio. Cropping to `closest` takes the listed bucket nearest the image's
    own ratio; `random` draws one of the listed buckets by weight, fixed by (seed, dataset, key)."""
    if entry.crop and entry.crop_aspect == "square":
        return 1.0
    own = round(width / height, entry.aspect_bucket_rounding)
    aspects, weights = _bucket_choices(entry)
    if entry.crop and aspects and entry.crop_aspect == "closest":
        return min(aspects, key=lambda a: (abs(a - own), a))
    if entry.crop and aspects and entry.crop_aspect == "random":
        draw = (crop_seed(seed, entry.id, f"aspect:{key}") % 1_000_000) / 1_000_000 * sum(weights)
        for aspect, weight in zip(aspects, weights, strict=True):
            draw -= weight
            if draw < 0:
                return aspect
        return aspects[-1]
    return own


def target_size(width: int, height: int, entry: DatasetEntry, seed: int = 0, key: str = "") -> tuple[int, int]:
    """The bucket (width, height) for an image of this (oriented) size under the entry's keys."""
    size = downsample_size(width, height, entry) or (width, height)
    aspect = aspect_ratio(*size, entry, seed, key)
    if entry.resolution is None:
        # No resolution: keep the image's own size, on the bucket grid.
        return _round_edge(size[0]), _round_edge(size[1])
    if entry.resolution_type == "pixel":
        short = float(entry.resolution)
        if aspect >= 1:
            return _round_edge(short * aspect), _round_edge(short)
        return _round_edge(short), _round_edge(short / aspect)
    area = _area_pixels(entry, entry.resolution)
    return _round_edge(math.sqrt(area * aspect)), _round_edge(math.sqrt(area / aspect))


def crop_seed(seed: int, dataset_id: str, key: str) -> int:
    digest = hashlib.sha256(f"crop:{seed}:{dataset_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def crop_plan(width: int, height: int, entry: DatasetEntry, seed: int, key: str) -> dict[str, Any]:
    """How an image of this size becomes its bucket: {source, downsample, resize, box, size}."""
    bucket = target_size(width, height, entry, seed, key)
    down = downsample_size(width, height, entry)
    w, h = down or (width, height)
    if not entry.crop:
        # SimpleTuner without crop: resize straight to the bucket (the rounding distorts slightly).
        resize, box = bucket, (0, 0, bucket[0], bucket[1])
    else:
        scale = max(bucket[0] / w, bucket[1] / h)
        resize = (max(bucket[0], round(w * scale)), max(bucket[1], round(h * scale)))
        spare_w, spare_h = resize[0] - bucket[0], resize[1] - bucket[1]
        if entry.crop_style == "random":
            rng = crop_seed(seed, entry.id, key)
            left, top = rng % (spare_w + 1), (rng >> 32) % (spare_h + 1)
        elif entry.crop_style == "corner":
            left, top = 0, 0
        else:
            left, top = spare_w // 2, spare_h // 2
        box = (left, top, left + bucket[0], top + bucket[1])
    return {
        "source": [width, height],
        "downsample": list(down) if down else None,
        "resize": list(resize),
        "box": list(box),
        "size": list(bucket),
    }


def apply_crop(img: Image.Image, plan: dict[str, Any]) -> Image.Image:
    """Apply a crop plan. A strict reference of another size is first brought to the plan's source size."""
    source = tuple(plan["source"])
    if img.size != source:
        img = img.resize(source, RESAMPLE)
    if plan.get("downsample"):
        img = img.resize(tuple(plan["downsample"]), RESAMPLE)
    resize = tuple(plan["resize"])
    if img.size != resize:
        img = img.resize(resize, RESAMPLE)
    return img.crop(tuple(plan["box"]))


def crop_box(width: int, height: int, target: tuple[int, int]) -> tuple[int, int, int, int]:
    """Centre crop box (left, top, right, bottom) in the image scaled to cover `target`."""
    target_w, target_h = target
    scale = max(target_w / width, target_h / height)
    scaled_w, scaled_h = round(width * scale), round(height * scale)
    left = (scaled_w - target_w) // 2
    top = (scaled_h - target_h) // 2
    return left, top, left + target_w, top + target_h


def resize_and_crop(img: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Cover `target` and centre-crop (validation images, which have no plan)."""
    target_w, target_h = target
    scale = max(target_w / img.width, target_h / img.height)
    scaled = img.resize((round(img.width * scale), round(img.height * scale)), RESAMPLE)
    return scaled.crop(crop_box(img.width, img.height, target))
