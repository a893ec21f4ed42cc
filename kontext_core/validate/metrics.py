"""Image metrics against the edit targets."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def psnr(output: Image.Image, target: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB over 8-bit RGB; images must share a size."""
    a = np.asarray(output.convert("RGB"), dtype=np.float64)
    b = np.asarray(target.convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"size mismatch: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 10 * math.log10(255.0**2 / mse)
