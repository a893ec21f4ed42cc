"""Target sizes (buckets) and crop boxes for training images.

Edges are multiples of 16: the VAE downsamples by 8 and the transformer packs 2x2 latent patches.
"""

from __future__ import annotations

import math

from PIL import Image

from kontext_core.config import DatasetEntry

EDGE_MULTIPLE = 16


def _round_edge(value: float) -> int:
    return max(EDGE_MULTIPLE, int(round(value / EDGE_MULTIPLE)) * EDGE_MULTIPLE)


def target_size(width: int, height: int, entry: DatasetEntry) -> tuple[int, int]:
    """The bucket (width, height) for an image of this size under the entry's resolution keys."""
    if entry.resolution is None:
        return _round_edge(width), _round_edge(height)
    if entry.crop and entry.crop_aspect == "square":
        aspect = 1.0
    else:
        aspect = round(width / height, 2)
    if entry.resolution_type == "pixel":
        short = float(entry.resolution)
        if aspect >= 1:
            return _round_edge(short * aspect), _round_edge(short)
        return _round_edge(short), _round_edge(short / aspect)
    # pixel_area: resolution is an edge length whose square is the area; area: megapixels.
    area = entry.resolution**2 if entry.resolution_type == "pixel_area" else entry.resolution * 1e6
    new_height = math.sqrt(area / aspect)
    return _round_edge(new_height * aspect), _round_edge(new_height)


def crop_box(width: int, height: int, target: tuple[int, int]) -> tuple[int, int, int, int]:
    """Centre crop box (left, top, right, bottom) in the image scaled to cover `target`."""
    target_w, target_h = target
    scale = max(target_w / width, target_h / height)
    scaled_w, scaled_h = round(width * scale), round(height * scale)
    left = (scaled_w - target_w) // 2
    top = (scaled_h - target_h) // 2
    return left, top, left + target_w, top + target_h


def resize_and_crop(img: Image.Image, target: tuple[int, int]) -> Image.Image:
    target_w, target_h = target
    scale = max(target_w / img.width, target_h / img.height)
    scaled = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    return scaled.crop(crop_box(img.width, img.height, target))
