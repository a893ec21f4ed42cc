"""Which precision a training run may use on the device it got.

`mixed_precision: bf16` means bf16 autocast on an accelerator. On a CPU the quantized base would be
bf16 while the batch stays float32 (torch's CPU autocast does not cover optimum-quanto's matmuls),
and the run would die deep inside the first forward; CPU runs are also what the project keeps
byte-reproducible. So a CPU run with bf16 is refused before anything loads, in one line.
"""

from __future__ import annotations

import torch

from kontext_core.config import ConfigError, Params


def check_precision(params: Params, device: torch.device) -> None:
    if params.mixed_precision == "bf16" and device.type == "cpu":
        raise ConfigError(
            "params: mixed_precision = 'bf16' needs an accelerator (this run trains on cpu); "
            "set mixed_precision: 'no' on a CPU"
        )
