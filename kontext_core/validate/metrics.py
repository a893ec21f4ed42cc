"""The validation metrics: a metric is one function plus one `register_metric(Metric(...))` line.

A registered metric is selectable by `registry.metric` (params are checked against this table, with
the allowed values), scored by the validate stage for the base model and the adapter (the scalars
`<name>` and `<name>_base` in `artifacts/metrics/validate.json`, `val/<name>` and `val/<name>_base` in
MLflow), ranked by the registry in its own direction, and shown by the run summary, the approval form,
the model card and the Prefect artifacts. Its direction is part of its definition, so a version can
never be promoted because its loss went up.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# One eval pair's score: (the edited image, its target) -> a number; the pairs' mean is the metric.
ImageScore = Callable[["Image.Image", "Image.Image"], float]


@dataclass(frozen=True)
class Metric:
    name: str
    greater_is_better: bool
    description: str
    # Scores one edit against its target. None: the scoring computes it from the model itself
    # (`eval_loss`: the flow-matching loss on the cached latents, kontext_core.validate.eval_loss).
    compute: ImageScore | None = None
    # The column heading in reports ("PSNR"); the name when empty.
    label: str = ""

    @property
    def heading(self) -> str:
        return self.label or self.name


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Make `metric` selectable by `registry.metric` and scored by every validation from now on."""
    if not metric.name.isidentifier() or metric.name.endswith("_base"):
        raise ValueError(f"metric name {metric.name!r}: use a Python identifier not ending in _base")
    METRICS[metric.name] = metric
    return metric


def metric(name: str) -> Metric:
    if name not in METRICS:
        raise KeyError(f"registry.metric = {name!r}: unknown metric; allowed: {', '.join(METRICS)}")
    return METRICS[name]


def image_metrics() -> list[Metric]:
    """The metrics scored on the edits (each eval pair's output against its target), in registration order."""
    return [m for m in METRICS.values() if m.compute is not None]


def metric_code() -> dict[str, str]:
    """What each image metric computes, as the hash of its function's source file: part of the validate
    stage's fingerprint and of the eval fingerprint, so a new or changed metric is scored again (a metric
    registered outside kontext_core is not in the stage's code version)."""
    code = {}
    for m in image_metrics():
        source = inspect.getsourcefile(m.compute) or ""  # type: ignore[arg-type]
        try:
            with open(source, "rb") as fh:
                code[m.name] = hashlib.sha256(fh.read()).hexdigest()[:16]
        except OSError:
            code[m.name] = getattr(m.compute, "__qualname__", repr(m.compute))
    return code


def _pixels(output: Image.Image, target: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    a = np.asarray(output.convert("RGB"), dtype=np.float64)
    b = np.asarray(target.convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"size mismatch: {a.shape} vs {b.shape}")
    return a, b


def psnr(output: Image.Image, target: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB over 8-bit RGB; images must share a size."""
    import numpy as np

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


register_metric(
    Metric("eval_loss", False, "flow-matching loss on the eval pairs at fixed timesteps and noise", label="eval loss")
)
register_metric(Metric("psnr", True, "PSNR (dB) of the edited eval references against their targets", psnr, "PSNR"))
register_metric(Metric("ssim", True, "SSIM of the edited eval references against their targets", ssim, "SSIM"))
