"""Canny edges in numpy (the `canny` generator), so that no OpenCV is needed.

The steps of OpenCV's `Canny` with its defaults, which SimpleTuner's generator calls through its
`trainingsample` wrapper: 3x3 Sobel gradients (borders replicated), the L1 magnitude |gx| + |gy|,
non-maximum suppression along the gradient direction rounded to 0/45/90/135 degrees, then hysteresis:
pixels above `high` are edges, and pixels above `low` are edges when 8-connected to one.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

TAN_22_5 = np.tan(np.pi / 8)


def _sobel(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    padded = np.pad(grey.astype(np.float32), 1, mode="edge")
    h, w = grey.shape

    def at(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    return gx, gy


def _thin(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Keep only the pixels that are a maximum across the edge."""
    padded = np.pad(magnitude, 1)
    h, w = magnitude.shape

    def neighbour(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    ax, ay = np.abs(gx), np.abs(gy)
    horizontal = ay <= ax * TAN_22_5  # gradient along x: compare left and right
    vertical = ay > ax / TAN_22_5  # gradient along y: compare up and down
    same_sign = (gx * gy) > 0  # the diagonal the gradient points along (image rows grow downwards)
    keep = np.zeros_like(magnitude, dtype=bool)
    m = magnitude
    # OpenCV keeps a pixel that is > one neighbour and >= the other, so plateaus keep one side.
    keep |= horizontal & (m > neighbour(0, -1)) & (m >= neighbour(0, 1))
    keep |= vertical & (m > neighbour(-1, 0)) & (m >= neighbour(1, 0))
    diagonal = ~horizontal & ~vertical
    keep |= diagonal & same_sign & (m > neighbour(-1, -1)) & (m >= neighbour(1, 1))
    keep |= diagonal & ~same_sign & (m > neighbour(-1, 1)) & (m >= neighbour(1, -1))
    return keep


def canny_edges(grey: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 edge map (255 on edges, 0 elsewhere) of a 2-D grey image."""
    low, high = min(low, high), max(low, high)
    gx, gy = _sobel(grey)
    magnitude = np.abs(gx) + np.abs(gy)
    candidates = _thin(magnitude, gx, gy) & (magnitude > low)
    labels, count = ndimage.label(candidates, structure=np.ones((3, 3), dtype=bool))
    strong = np.unique(labels[candidates & (magnitude > high)])
    edges = np.isin(labels, strong[strong > 0])
    return (edges * 255).astype(np.uint8)
