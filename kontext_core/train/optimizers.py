"""Optimizers by SimpleTuner name."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from kontext_core.config import Params


def build_optimizer(params: Params, trainable: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    trainable = list(trainable)
    name = params.optimizer
    if name == "adamw":
        return torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=1e-2)
    import optimi

    if name == "optimi-adamw":
        return optimi.AdamW(trainable, lr=params.learning_rate, weight_decay=1e-2)
    if name == "optimi-lion":
        return optimi.Lion(trainable, lr=params.learning_rate, weight_decay=1e-2)
    if name == "adamw_bf16":
        # Kahan summation keeps bf16 weights from losing small updates.
        return optimi.AdamW(trainable, lr=params.learning_rate, weight_decay=1e-2, kahan_sum=True)
    raise ValueError(f"optimizer = {name!r}: not supported")
