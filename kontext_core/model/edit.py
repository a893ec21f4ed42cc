"""Applying a saved adapter to a pipeline and sizing an edit: shared by `kontext edit` and the
registered pyfunc model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

MAX_AREA = 1024 * 1024


def load_adapter(pipe: Any, adapter: Path) -> str:
    """Apply a saved adapter (a folder or a file) to a pipeline; returns its kind's `lora_type`."""
    from kontext_core.model.adapter_kinds import detect

    kind, weights = detect(Path(adapter))
    kind.load_for_inference(pipe, weights)
    return kind.lora_type


def output_size(width: int, height: int, max_area: int = MAX_AREA) -> tuple[int, int]:
    """The input's size, scaled down to `max_area` if larger, edges floored to multiples of 16."""
    scale = min(1.0, math.sqrt(max_area / (width * height)))
    return max(16, int(width * scale) // 16 * 16), max(16, int(height * scale) // 16 * 16)
