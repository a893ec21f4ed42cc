"""Random masks (the `random_masks` generator): SimpleTuner's shapes and options, drawn from a seeded
generator so that one (seed, file) always gives the same mask.

Shapes (rectangle, circle, brush stroke, irregular polygon) are added until the drawn count or the
target coverage is reached; then the edges are blurred and feathered, and the mask optionally inverted.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from kontext_core.config import ConditioningGenerator

FEATHER_PIXELS = 10  # SimpleTuner's feather width


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _int(rng: np.random.Generator, low: int, high: int) -> int:
    """An integer in [low, high] (inclusive, as Python's randint), or low when the range is empty."""
    return int(rng.integers(low, high + 1)) if high > low else int(low)


def _rectangle(
    draw: ImageDraw.ImageDraw, size: tuple[int, int], g: ConditioningGenerator, rng: np.random.Generator
) -> None:
    width, height = size
    rect_w = int(width * _uniform(rng, g.rect_min_size, g.rect_max_size))
    rect_h = int(height * _uniform(rng, g.rect_min_size, g.rect_max_size))
    x, y = _int(rng, 0, width - rect_w), _int(rng, 0, height - rect_h)
    draw.rectangle([x, y, x + rect_w, y + rect_h], fill=g.mask_value)


def _circle(
    draw: ImageDraw.ImageDraw, size: tuple[int, int], g: ConditioningGenerator, rng: np.random.Generator
) -> None:
    width, height = size
    radius = int(min(size) * _uniform(rng, g.circle_min_radius, g.circle_max_radius))
    cx, cy = _int(rng, radius, width - radius), _int(rng, radius, height - radius)
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=g.mask_value)


def _brush(
    draw: ImageDraw.ImageDraw, size: tuple[int, int], g: ConditioningGenerator, rng: np.random.Generator
) -> None:
    width, height = size
    brush = _int(rng, g.brush_min_width, g.brush_max_width)
    length = int(min(size) * _uniform(rng, g.brush_min_length, g.brush_max_length))
    lo_x, hi_x = min(brush, width - 1), max(min(brush, width - 1), width - brush)
    lo_y, hi_y = min(brush, height - 1), max(min(brush, height - 1), height - brush)
    points = [(_int(rng, lo_x, hi_x), _int(rng, lo_y, hi_y))]
    for _ in range(max(2, length // 20) - 1):
        angle, distance = _uniform(rng, 0.0, 2 * np.pi), _uniform(rng, 20.0, 50.0)
        x = int(points[-1][0] + distance * np.cos(angle))
        y = int(points[-1][1] + distance * np.sin(angle))
        points.append((max(lo_x, min(hi_x, x)), max(lo_y, min(hi_y, y))))
    for start, end in zip(points, points[1:], strict=False):
        draw.line([start, end], fill=g.mask_value, width=brush)
    for x, y in points:
        draw.ellipse([x - brush // 2, y - brush // 2, x + brush // 2, y + brush // 2], fill=g.mask_value)


def _irregular(
    draw: ImageDraw.ImageDraw, size: tuple[int, int], g: ConditioningGenerator, rng: np.random.Generator
) -> None:
    width, height = size
    count = _int(rng, g.irregular_min_points, g.irregular_max_points)
    cx, cy = _int(rng, width // 4, 3 * width // 4), _int(rng, height // 4, 3 * height // 4)
    points = []
    for i in range(count):
        angle = 2 * np.pi * i / count + _uniform(rng, -0.3, 0.3)
        radius = _uniform(rng, 0.1, 0.3) * min(size)
        x = max(0, min(width - 1, int(cx + radius * np.cos(angle))))
        y = max(0, min(height - 1, int(cy + radius * np.sin(angle))))
        points.append((x, y))
    draw.polygon(points, fill=g.mask_value)


SHAPES = {"rectangle": _rectangle, "circle": _circle, "brush": _brush, "irregular": _irregular}


def _feather(mask: Image.Image) -> Image.Image:
    """A ramp FEATHER_PIXELS wide on both sides of the mask's edge."""
    inside = np.asarray(mask, dtype=np.float32) / 255.0 > 0.5
    ramp = np.ones(inside.shape, dtype=np.float32)
    outside_distance = ndimage.distance_transform_edt(~inside)
    inside_distance = ndimage.distance_transform_edt(inside)
    ramp[~inside] = np.clip(outside_distance[~inside] / FEATHER_PIXELS, 0, 1)
    ramp[inside] = np.clip(1 - (inside_distance[inside] - FEATHER_PIXELS) / FEATHER_PIXELS, 0, 1)
    return Image.fromarray((ramp * 255).astype(np.uint8), mode="L")


def random_mask_image(size: tuple[int, int], g: ConditioningGenerator, rng: np.random.Generator) -> Image.Image:
    """A greyscale mask (mask_value where masked) of `size`."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    count = _int(rng, g.min_masks, g.max_masks)
    target = _uniform(rng, g.min_coverage, g.max_coverage)
    weights = None
    if g.mask_type_weights:
        weights = np.asarray(g.mask_type_weights, dtype=np.float64) / sum(g.mask_type_weights)
    for _ in range(count):
        if np.count_nonzero(np.asarray(mask)) / (size[0] * size[1]) >= target:
            break
        kind = g.mask_types[int(rng.choice(len(g.mask_types), p=weights))]
        SHAPES[kind](draw, size, g, rng)
    if g.edge_blur and g.edge_blur_radius > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(g.edge_blur_radius))
    if g.edge_feather:
        mask = _feather(mask)
    if g.invert_mask:
        mask = Image.eval(mask, lambda v: 255 - v)
    return mask
