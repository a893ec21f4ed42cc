"""LoRA adapters on the (quantized) transformer, saved in diffusers' LoRA format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import FluxKontextPipeline, FluxTransformer2DModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from kontext_core.config import Params
from kontext_core.fsutil import atomic_dir, canonicalize_safetensors_header

ATTENTION_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
]
LORA_FILE = "pytorch_lora_weights.safetensors"


def lora_config(params: Params) -> LoraConfig:
    return LoraConfig(
        r=params.lora_rank,
        lora_alpha=params.effective_lora_alpha,
        init_lora_weights="gaussian",
        target_modules=list(ATTENTION_TARGETS),
    )


class Adapter:
    """A trainable adapter attached to a transformer: what the trainer and checkpoints see.

    `state_dict` / `load_state_dict` carry only the adapter's tensors (checkpoints, DDP sync);
    `save` writes the release format into a folder atomically.
    """

    def __init__(self, transformer: FluxTransformer2DModel, params: Params) -> None:
        self.transformer = transformer
        self.params = params

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(self.transformer).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        incompatible = set_peft_model_state_dict(self.transformer, state)
        unexpected = getattr(incompatible, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"adapter state has keys not in the model: {unexpected[:3]}")

    def save(self, out_dir: Path) -> Path:
        return save_lora(self.transformer, out_dir, self.params)


def add_adapter(transformer: FluxTransformer2DModel, params: Params) -> Adapter:
    """Attach the adapter that `params` describe (deterministic under the caller's seed)."""
    add_lora(transformer, params)
    return Adapter(transformer, params)


def attach_saved_adapter(transformer: FluxTransformer2DModel, adapter_dir: Path, params: Params) -> None:
    """Re-create a saved adapter (the folder `Adapter.save` wrote) live on a (quantized) transformer."""
    attach_saved_lora(transformer, Path(adapter_dir) / LORA_FILE, params)


def add_lora(transformer: FluxTransformer2DModel, params: Params) -> list[torch.nn.Parameter]:
    """Attach a fresh LoRA (deterministic under the caller's seed); returns trainable params."""
    transformer.requires_grad_(False)
    transformer.add_adapter(lora_config(params))
    return [p for p in transformer.parameters() if p.requires_grad]


def save_lora(transformer: FluxTransformer2DModel, out_dir: Path, params: Params) -> Path:
    """Write `pytorch_lora_weights.safetensors` loadable by `FluxKontextPipeline.load_lora_weights`."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    config = lora_config(params).to_dict()
    metadata: dict[str, Any] = {
        "r": config["r"],
        "lora_alpha": config["lora_alpha"],
        "target_modules": sorted(config["target_modules"]),
    }
    with atomic_dir(Path(out_dir)) as tmp:
        FluxKontextPipeline.save_lora_weights(
            tmp,
            transformer_lora_layers=state,
            transformer_lora_adapter_metadata=metadata,
            safe_serialization=True,
        )
        canonicalize_safetensors_header(tmp / LORA_FILE)
    return Path(out_dir) / LORA_FILE


def attach_saved_lora(transformer: FluxTransformer2DModel, adapter_file: Path, params: Params) -> None:
    """Re-create the live adapter on a (quantized) transformer from a saved diffusers LoRA file.

    `load_lora_weights` cannot target a quanto-quantized transformer, so the adapter is injected
    with peft and its weights set directly.
    """
    state = load_file(str(adapter_file))
    prefix = "transformer."
    state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    transformer.add_adapter(lora_config(params))
    incompatible = set_peft_model_state_dict(transformer, state)
    unexpected = getattr(incompatible, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{adapter_file}: keys not in the model: {unexpected[:3]}")
    transformer.requires_grad_(False)
