"""Image metrics against the edit targets, and what each validation metric means for ranking.

A metric's direction is part of its definition: the registry reads it from `METRICS`, so a
version can never be promoted because its loss went up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Metric:
    name: str
    greater_is_better: bool
    description: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("eval_loss", False, "flow-matching loss on the eval pairs at fixed timesteps and noise"),
        Metric("psnr", True, "PSNR (dB) of the edited eval references against their targets"),
        Metric("ssim", True, "SSIM of the edited eval references against their targets"),
    ]
}


def metric(name: str) -> Metric:
    if name not in METRICS:
        raise KeyError(f"unknown validation metric {name!r}; allowed: {', '.join(METRICS)}")
    return METRICS[name]


def _pixels(output: Image.Image, target: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(output.convert("RGB"), dtype=np.float64)
    b = np.asarray(target.convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"size mismatch: {a.shape} vs {b.shape}")
    return a, b


def psnr(output: Image.Image, target: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB over 8-bit RGB; images must share a size."""
    a, b = _pixels(output, target)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 10 * math.log10(255.0**2 / mse)


def ssim(output: Image.Image, target: Image.Image) -> float:
    """Structural similarity (torchmetrics, Gaussian window) over 8-bit RGB in [0, 1]."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _pixels(output, target)
    # The 11-px default window needs images at least that large; small validation images get a smaller one.
    kernel = min(11, (min(a.shape[0], a.shape[1]) // 2) * 2 - 1)
    to_tensor = lambda x: torch.from_numpy(x / 255.0).permute(2, 0, 1)[None].float()  # noqa: E731
    value = structural_similarity_index_measure(to_tensor(a), to_tensor(b), data_range=1.0, kernel_size=kernel)
    return float(value)
