"""A third adapter kind, written the way a user would add one: a trainable per-channel bias on the
transformer's output layer, saved as `toy_bias.safetensors`. Nothing in a stage knows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kontext_core.config import Params
from kontext_core.fsutil import atomic_dir
from kontext_core.model.adapter_kinds import AdapterKind

WEIGHTS = "toy_bias.safetensors"


class _BiasAdapter:
    def __init__(self, transformer: Any, bias: torch.nn.Parameter) -> None:
        self.transformer = transformer
        self.bias = bias

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.bias]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"toy_bias": self.bias.detach().to("cpu").contiguous()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.bias.copy_(state["toy_bias"])

    def save(self, out_dir: Path) -> Path:
        with atomic_dir(Path(out_dir)) as tmp:
            save_file(self.state_dict(), tmp / WEIGHTS)
        return Path(out_dir) / WEIGHTS


def _attach(transformer: Any, bias: torch.nn.Parameter) -> _BiasAdapter:
    transformer.requires_grad_(False)
    # A submodule parameter follows .to() like peft's layers do.
    holder = torch.nn.Module()
    holder.register_parameter("bias", bias)
    transformer.add_module("toy_bias", holder)
    transformer.proj_out.register_forward_hook(lambda _m, _i, out: out + holder.bias)
    return _BiasAdapter(transformer, bias)


class ToyBias(AdapterKind):
    lora_type = "toy"
    format = "toy-bias"

    def add(self, transformer: Any, params: Params, workdir: Path | None) -> Any:
        bias = torch.nn.Parameter(torch.zeros(transformer.proj_out.out_features))
        return _attach(transformer, bias)

    def find_weights(self, saved: Path) -> Path | None:
        path = saved if saved.is_file() else saved / WEIGHTS
        return path if path.name == WEIGHTS and path.exists() else None

    def attach_live(self, transformer: Any, weights: Path, params: Params) -> None:
        bias = torch.nn.Parameter(load_file(str(weights))["toy_bias"], requires_grad=False)
        _attach(transformer, bias)

    def load_for_inference(self, pipe: Any, weights: Path) -> None:
        self.attach_live(pipe.transformer, weights, Params())
