"""Aspect buckets and crop plans, following SimpleTuner's `TrainingSample` and `MultiaspectImage`.

(Read from bghira/SimpleTuner at the commit in config/simpletuner/; the math is re-derived here, not copied.)

`resolution_type`:
- `pixel`: `resolution` is the length of the shorter edge of the original orientation.
- `area`: `resolution` is megapixels.
- `pixel_area`: an edge length E meaning E² pixels; SimpleTuner turns it into `area` with E²/1e6
  megapixels (and the size keys the same way) before anything else, and so does this module.

Every plan has two sizes: the bucket (`size`, edges multiples of 64, SimpleTuner's
`aspect_bucket_alignment`) and the intermediary (`resize`), which keeps the image's own aspect ratio
and covers the bucket. The image is resized to the intermediary, then the few extra pixels are cut by
`crop_style` (`box`). Nothing is ever stretched: that holds with `crop: false` too, where SimpleTuner
also resizes to the intermediary and then cuts with the dataset's crop style. What `crop` changes is
the bucket's aspect ratio: off, it is the image's own (rounded to `aspect_bucket_rounding` decimals);
on, `crop_aspect` picks it (`square`: 1.0; `preserve`: the image's own; `closest`: the listed bucket
nearest the image's; `random`: one listed bucket drawn by weight).

Where SimpleTuner draws at random (`crop_style: random`, `crop_aspect: random`) this module draws from
a hash of (seed, dataset, file), so the same params give the same plan, and cached latents stay valid.
`crop_style: face` needs a face detector model and is refused at config check.

With `crop: true`, `maximum_image_size` + `target_downsample_size` replace the intermediary with one
computed at `target_downsample_size` (still covering the bucket), as SimpleTuner's
`_downsample_before_crop`; with `crop: false` SimpleTuner does not use them and neither does this.
`minimum_image_size` uses the same unit as `resolution`.

`resolution: null` (this pipeline's own default, see docs/simpletuner.md) buckets an image at its own
size on the 64 px grid, with the same resize-then-cut.

The pair stage writes plans into the pair table; cache_vae and validation apply them, so a strict
reference is cut with its edit image's plan.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from PIL import Image

from kontext_core.config import DatasetEntry

EDGE_MULTIPLE = 64  # SimpleTuner's aspect_bucket_alignment default
RESAMPLE = Image.LANCZOS
# SimpleTuner's TrainingSample snaps these megapixel values (±0.05) to the square edge it means.
AREA_EDGES = {0.25: 512, 0.5: 768, 1.0: 1024, 2.0: 1536, 4.0: 2048}

Size = tuple[int, int]


def _align(value: float) -> int:
    return max(EDGE_MULTIPLE, int(round(value / EDGE_MULTIPLE)) * EDGE_MULTIPLE)


def _megapixels(entry: DatasetEntry, value: float) -> float:
    """A resolution-like value of an area or pixel_area entry, in megapixels."""
    return value if entry.resolution_type == "area" else value * value / 1e6


def _area_pixels(entry: DatasetEntry, value: float) -> float:
    return _megapixels(entry, value) * 1e6


def meets_minimum(width: int, height: int, entry: DatasetEntry) -> bool:
    """Whether an image is at least `minimum_image_size` in the entry's resolution unit."""
    if entry.minimum_image_size is None:
        return True
    if entry.resolution_type == "pixel":
        return min(width, height) >= entry.minimum_image_size
    return width * height >= _area_pixels(entry, entry.minimum_image_size)


def _by_pixel_edge(aspect: float, resolution: float, original: Size) -> tuple[Size, Size]:
    """(bucket, intermediary) for resolution_type pixel: the original's shorter edge becomes `resolution`."""
    width, height = original
    if width < height:
        raw_w, raw_h = resolution, int(resolution / aspect)
    else:
        raw_w, raw_h = int(resolution * aspect), resolution
    bucket = (_align(raw_w), _align(raw_h))
    own = width / height
    if own >= 1.0:
        inter_h = max(bucket[1], raw_h)
        inter_w = int(inter_h * own)
        if inter_w < bucket[0]:
            inter_w = bucket[0]
            inter_h = int(inter_w / own)
    else:
        inter_w = max(bucket[0], raw_w)
        inter_h = int(inter_w / own)
        if inter_h < bucket[1]:
            inter_h = bucket[1]
            inter_w = int(inter_h * own)
    return (int(bucket[0]), int(bucket[1])), (int(inter_w), int(inter_h))


def _by_area(aspect: float, megapixels: float, original: Size) -> tuple[Size, Size]:
    """(bucket, intermediary) for resolution_type area: the bucket holds about `megapixels`."""
    edge = _align(int(math.sqrt(megapixels * 1e6)))
    width, height = original
    if aspect == 1.0 and width == height:
        return (edge, edge), (edge, edge)
    bucket = (_align(edge * math.sqrt(aspect)), _align(edge / math.sqrt(aspect)))
    own = width / height
    if bucket[0] < bucket[1]:
        inter_w, inter_h = bucket[0], int(bucket[0] / own)
    else:
        inter_w, inter_h = int(bucket[1] * own), bucket[1]
    if bucket[0] > inter_w:
        grow_w = bucket[0] - inter_w
        inter_w, inter_h = inter_w + grow_w, inter_h + int(grow_w / own)
    elif bucket[1] > inter_h:
        grow_h = bucket[1] - inter_h
        inter_w, inter_h = inter_w + int(grow_h * own), inter_h + grow_h
    return bucket, (inter_w, inter_h)


def _sizes(entry: DatasetEntry, aspect: float, value: float, original: Size) -> tuple[Size, Size]:
    if entry.resolution_type == "pixel":
        return _by_pixel_edge(aspect, value, original)
    return _by_area(aspect, _megapixels(entry, value), original)


def _square_edge(entry: DatasetEntry) -> int:
    """SimpleTuner's `pixel_resolution`: every 1:1 bucket is this square."""
    assert entry.resolution is not None
    if entry.resolution_type == "pixel":
        return int(entry.resolution)
    megapixels = _megapixels(entry, entry.resolution)
    for snapped, edge in AREA_EDGES.items():
        if abs(megapixels - snapped) < 0.05:
            return edge
    return _align(math.sqrt(megapixels * 1e6))


def _bucket_choices(entry: DatasetEntry) -> tuple[list[float], list[float]]:
    """`crop_aspect_buckets` as (aspect ratios, weights): plain numbers weigh the same."""
    aspects, weights = [], []
    for bucket in entry.crop_aspect_buckets or []:
        if isinstance(bucket, dict):
            aspects.append(float(bucket.get("aspect", bucket.get("aspect_bucket", 1.0))))
            weights.append(float(bucket["weight"]))
        else:
            aspects.append(float(bucket))
            weights.append(1.0)
    return aspects, weights


def aspect_ratio(width: int, height: int, entry: DatasetEntry, seed: int = 0, key: str = "") -> float:
    """The aspect ratio the bucket is computed from: the image's own, rounded, unless a crop picks one.
    `closest` takes the first listed bucket nearest the image's own ratio; `random` draws one by weight,
    fixed by (seed, dataset, key)."""
    own = round(width / height, entry.aspect_bucket_rounding)
    if not entry.crop:
        return own
    if entry.crop_aspect == "square":
        return 1.0
    aspects, weights = _bucket_choices(entry)
    if aspects and entry.crop_aspect == "closest":
        return min(aspects, key=lambda a: abs(a - own))
    if aspects and entry.crop_aspect == "random":
        draw = (crop_seed(seed, entry.id, f"aspect:{key}") % 1_000_000) / 1_000_000 * sum(weights)
        for aspect, weight in zip(aspects, weights, strict=True):
            draw -= weight
            if draw < 0:
                return aspect
        return aspects[-1]
    return own


def _cover(size: Size, bucket: Size) -> Size:
    """`size` grown (keeping its aspect) until it covers `bucket` on both edges."""
    scale = max(1.0, bucket[0] / size[0], bucket[1] / size[1])
    return max(bucket[0], math.ceil(size[0] * scale - 1e-9)), max(bucket[1], math.ceil(size[1] * scale - 1e-9))


def bucket_and_intermediary(
    width: int, height: int, entry: DatasetEntry, seed: int = 0, key: str = ""
) -> tuple[Size, Size]:
    """(bucket, intermediary) of an (oriented) image under the entry's keys, as SimpleTuner's
    `TrainingSample.calculate_target_size` (plus its downsample-before-crop when that applies)."""
    original = (width, height)
    if entry.resolution is None:
        bucket = (_align(width), _align(height))
        return bucket, _cover(original, bucket)
    square = _square_edge(entry)
    if entry.crop and entry.crop_aspect == "square":
        bucket = (square, square)
        _, inter = _sizes(entry, 1.0, entry.resolution, original)
    else:
        aspect = aspect_ratio(width, height, entry, seed, key)
        bucket, inter = _sizes(entry, aspect, entry.resolution, original)
        if round(bucket[0] / bucket[1], entry.aspect_bucket_rounding) == 1.0:
            bucket = (square, square)
    if entry.crop and entry.maximum_image_size is not None and entry.target_downsample_size is not None:
        _, down = _sizes(
            entry, round(width / height, entry.aspect_bucket_rounding), entry.target_downsample_size, original
        )
        if down[0] < bucket[0]:
            down = (bucket[0], int(down[1] * bucket[0] / down[0]))
        elif down[1] < bucket[1]:
            down = (int(down[0] * bucket[1] / down[1]), bucket[1])
        inter = down
    # Grown (keeping its aspect) until it covers the bucket. SimpleTuner's integer truncation can leave
    # an intermediary a pixel short, which its cropper then cuts short; and for a 1:1 bucket it sets a
    # too-small intermediary to the square itself, stretching a non-square image. Both differ here
    # only in those corner cases; a square image gets exactly SimpleTuner's square.
    return bucket, _cover(inter, bucket)


def target_size(width: int, height: int, entry: DatasetEntry, seed: int = 0, key: str = "") -> Size:
    """The bucket (width, height) for an image of this (oriented) size under the entry's keys."""
    return bucket_and_intermediary(width, height, entry, seed, key)[0]


def crop_seed(seed: int, dataset_id: str, key: str) -> int:
    digest = hashlib.sha256(f"crop:{seed}:{dataset_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def crop_plan(width: int, height: int, entry: DatasetEntry, seed: int, key: str) -> dict[str, Any]:
    """How an image of this size becomes its bucket: resize (keeping its aspect) to `resize`, then cut
    `box` ({source, downsample, resize, box, size}; `downsample` is kept for older pair tables)."""
    bucket, resize = bucket_and_intermediary(width, height, entry, seed, key)
    spare_w, spare_h = resize[0] - bucket[0], resize[1] - bucket[1]
    if entry.crop_style == "random":
        rng = crop_seed(seed, entry.id, key)
        left, top = rng % (spare_w + 1), (rng >> 32) % (spare_h + 1)
    elif entry.crop_style == "corner":
        left, top = 0, 0
    else:
        left, top = spare_w // 2, spare_h // 2
    return {
        "source": [width, height],
        "downsample": None,
        "resize": list(resize),
        "box": [left, top, left + bucket[0], top + bucket[1]],
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
