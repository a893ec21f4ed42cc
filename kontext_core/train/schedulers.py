"""Learning-rate schedules by SimpleTuner name (diffusers' schedule functions), stepped once per optimizer step."""

from __future__ import annotations

import torch
from diffusers.optimization import (
    get_constant_schedule,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_polynomial_decay_schedule_with_warmup,
)
from torch.optim.lr_scheduler import LambdaLR

from kontext_core.config import Params


def build_scheduler(params: Params, optimizer: torch.optim.Optimizer, total_steps: int) -> LambdaLR:
    name = params.lr_scheduler
    warmup = params.lr_warmup_steps
    if name == "constant":
        return get_constant_schedule(optimizer)
    if name == "constant_with_warmup":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    if name == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    # polynomial: Params allows no other name, and its rules keep lr_end below learning_rate.
    return get_polynomial_decay_schedule_with_warmup(
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        lr_end=params.lr_end,
        power=params.lr_power,
    )


def scheduler_state(scheduler: LambdaLR) -> dict:
    """The JSON-safe part of the state (the schedule functions are rebuilt from params)."""
    return {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}


def load_scheduler_state(scheduler: LambdaLR, state: dict) -> None:
    scheduler.load_state_dict({**state, "lr_lambdas": [None] * len(scheduler.lr_lambdas)})
