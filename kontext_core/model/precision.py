"""The frozen base's precision, decided once for the quantize stage's fingerprint and for loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kontext_core.config import Params


def base_dtype_name(params: Params, device_type: str | None = None) -> str:
    """`bfloat16` for `mixed_precision: bf16` on an accelerator, else `float32`.

    On a CPU bf16 means float32 everywhere (quantized base, adapter, autocast off): the run trains,
    stays byte-reproducible, and a SimpleTuner config written for a GPU runs unchanged.
    """
    if params.mixed_precision != "bf16":
        return "float32"  # decided without importing torch (fingerprints are taken before any stage runs)
    if device_type is None:
        import torch

        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return "bfloat16" if device_type != "cpu" else "float32"


def quantize_inputs(params: Params, workdir: Path) -> dict[str, Any]:
    """The base model's identity and the dtype it is quantized in (a CPU box and a GPU box differ)."""
    from kontext_core.model.source import model_inputs

    return {**model_inputs(params, workdir), "base_dtype": base_dtype_name(params)}
