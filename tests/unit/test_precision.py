"""`mixed_precision: bf16` on a CPU computes in float32 (told once); on an accelerator it is bf16."""

from __future__ import annotations

import logging

import torch

from kontext_core.config import params_from_dict
from kontext_core.model.load import base_dtype
from kontext_core.train.precision import note_cpu_precision


def test_bf16_means_bf16_on_an_accelerator_and_float32_on_a_cpu(caplog):
    bf16 = params_from_dict({"mixed_precision": "bf16"})
    off = params_from_dict({"mixed_precision": "no"})
    assert base_dtype(bf16, torch.device("cuda")) == torch.bfloat16
    assert base_dtype(bf16, torch.device("cpu")) == torch.float32
    assert base_dtype(off, torch.device("cuda")) == torch.float32
    with caplog.at_level(logging.WARNING):
        assert note_cpu_precision(bf16, torch.device("cpu"))
        assert not note_cpu_precision(bf16, torch.device("cuda"))
        assert not note_cpu_precision(off, torch.device("cpu"))
    assert [r.getMessage() for r in caplog.records] == [
        "mixed_precision = 'bf16' on a CPU: training computes in float32 (bf16 applies on accelerators)"
    ]
