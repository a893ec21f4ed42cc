"""Optimizers by SimpleTuner name, and their state as safetensors + JSON (no pickle)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from kontext_core.config import Params

WEIGHT_DECAY = 1e-2


def build_optimizer(params: Params, trainable: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    trainable = list(trainable)
    name = params.optimizer
    if name == "adamw":
        return torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=WEIGHT_DECAY)
    import optimi

    if name == "optimi-adamw":
        return optimi.AdamW(trainable, lr=params.learning_rate, weight_decay=WEIGHT_DECAY)
    if name == "optimi-lion":
        return optimi.Lion(trainable, lr=params.learning_rate, weight_decay=WEIGHT_DECAY)
    if name == "adamw_bf16":
        # Weights live in bf16 (see `trainable_dtype`); Kahan summation keeps small updates from vanishing.
        return optimi.AdamW(trainable, lr=params.learning_rate, weight_decay=WEIGHT_DECAY, kahan_sum=True)
    raise ValueError(f"optimizer = {name!r}: not supported")


def trainable_dtype(params: Params) -> torch.dtype:
    """The dtype of the adapter weights: bf16 for `adamw_bf16`, float32 otherwise."""
    return torch.bfloat16 if params.optimizer == "adamw_bf16" else torch.float32


def optimizer_state_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (for safetensors) and the rest (for JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for param_id, entries in state["state"].items():
        for name, value in entries.items():
            key = f"{param_id}/{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().to("cpu").contiguous()
            else:
                scalars[key] = value
    groups = []
    for index, group in enumerate(state["param_groups"]):
        plain = {}
        for name, value in group.items():
            if isinstance(value, torch.Tensor):  # torch-optimi keeps some group values as tensors
                tensors[f"group.{index}/{name}"] = value.detach().to("cpu").contiguous()
            else:
                plain[name] = value
        groups.append(plain)
    return tensors, {"scalars": scalars, "param_groups": groups}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in meta["param_groups"]]
    for source in (tensors, meta["scalars"]):
        for key, value in source.items():
            owner, name = key.split("/", 1)
            if owner.startswith("group."):
                groups[int(owner[len("group.") :])][name] = value
            else:
                state.setdefault(int(owner), {})[name] = value
    return {"state": state, "param_groups": groups}
