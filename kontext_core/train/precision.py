"""Which precision a training run uses on the device it got.

`mixed_precision: bf16` means bf16 autocast (and a bf16 quantized base) on an accelerator. On a CPU
the run computes in float32 throughout (kontext_core.model.load.base_dtype): CPU runs stay
byte-reproducible, and a SimpleTuner config written for a GPU still runs. The user is told once.
"""

from __future__ import annotations

import logging

import torch

from kontext_core.config import Params

log = logging.getLogger(__name__)


def note_cpu_precision(params: Params, device: torch.device) -> bool:
    """Warn when bf16 was asked for on a CPU (computed in float32); True when it was."""
    if params.mixed_precision == "bf16" and device.type == "cpu":
        log.warning("mixed_precision = 'bf16' on a CPU: training computes in float32 (bf16 applies on accelerators)")
        return True
    return False
