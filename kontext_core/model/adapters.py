"""The standard adapter: peft LoRA on the (quantized) transformer, saved in diffusers' format.

The trainer sees one interface whatever `lora_type` says (kontext_core.model.adapter_kinds):
`Adapter` with `parameters`, `state_dict`, `load_state_dict` and `save`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxKontextPipeline, FluxTransformer2DModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from kontext_core.config import ConfigError, Params
from kontext_core.fsutil import atomic_dir, canonicalize_safetensors_header
from kontext_core.model.fusion import is_fused

LORA_FILE = "pytorch_lora_weights.safetensors"

ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
CONTEXT_TARGETS = ["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
IMAGE_FF_TARGETS = ["ff.net.0.proj", "ff.net.2", "proj_mlp", "proj_out"]
CONTEXT_FF_TARGETS = ["ff_context.net.0.proj", "ff_context.net.2"]

# SimpleTuner's `flux_lora_target` presets, as suffixes of diffusers' FluxTransformer2DModel module names.
# Double blocks: attn.{to_q,to_k,to_v,to_out.0} (image stream), attn.{add_*_proj,to_add_out} (text stream),
# ff / ff_context; single blocks: attn.{to_q,to_k,to_v}, proj_mlp, proj_out (their feed-forward path).
LORA_TARGET_PRESETS: dict[str, list[str]] = {
    "all": ATTENTION_TARGETS,
    "all+ffs": ATTENTION_TARGETS + IMAGE_FF_TARGETS + CONTEXT_FF_TARGETS,
    "context": CONTEXT_TARGETS,
    "context+ffs": CONTEXT_TARGETS + CONTEXT_FF_TARGETS,
}
# The model's final output layer is also named `proj_out`; it is not a block feed-forward.
EXCLUDED_FROM_TARGETS = "^proj_out$"

# With fused QKV, the separate projections no longer exist; each group becomes one module.
FUSED_GROUPS = {"to_qkv": ("to_q", "to_k", "to_v"), "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}

LORA_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


def target_suffixes(params: Params) -> list[str]:
    """The unfused module-name suffixes that `flux_lora_target` selects."""
    target = params.flux_lora_target
    if isinstance(target, list):
        if not target:
            raise ConfigError("flux_lora_target: an explicit module list must not be empty")
        return list(target)
    return list(LORA_TARGET_PRESETS[target])


def fused_suffixes(suffixes: list[str]) -> list[str]:
    """Map separate q/k/v targets onto the fused module that replaced them."""
    out: list[str] = []
    for suffix in suffixes:
        fused = next((f for f, parts in FUSED_GROUPS.items() if suffix.split(".")[-1] in parts), None)
        name = suffix.rsplit(".", 1)[0] + "." + fused if fused and "." in suffix else fused or suffix
        if name not in out:
            out.append(name)
    return out


def lora_config(params: Params, fused: bool = False) -> LoraConfig:
    suffixes = target_suffixes(params)
    return LoraConfig(
        r=params.lora_rank,
        lora_alpha=params.effective_lora_alpha,
        lora_dropout=params.lora_dropout,
        init_lora_weights=LORA_INIT[params.lora_init_type],
        target_modules=fused_suffixes(suffixes) if fused else suffixes,
        exclude_modules=EXCLUDED_FROM_TARGETS,
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

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model alone for the duration (regularisation data's parent-teacher target)."""
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()


def add_lora(transformer: FluxTransformer2DModel, params: Params) -> list[torch.nn.Parameter]:
    """Attach a fresh LoRA (deterministic under the caller's seed); returns trainable params."""
    from optimum.quanto import QModuleMixin

    if params.lora_init_type in ("pissa", "olora") and any(isinstance(m, QModuleMixin) for m in transformer.modules()):
        raise ConfigError(
            f"lora_init_type = {params.lora_init_type!r}: decomposes the base weights and needs an unquantized "
            "base; use base_model_precision: no_change or lora_init_type: default"
        )
    transformer.requires_grad_(False)
    transformer.add_adapter(lora_config(params, fused=is_fused(transformer)))
    return [p for p in transformer.parameters() if p.requires_grad]


def unfuse_lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Express a LoRA on fused `to_qkv` as the equivalent LoRAs on `to_q`/`to_k`/`to_v`.

    W_qkv + B·A with B = [B_q; B_k; B_v] is exactly W_q + B_q·A, W_k + B_k·A, W_v + B_v·A: the
    standard diffusers layout that `load_lora_weights` reads on an unfused model.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, rest = key.partition(".lora_")
        head, _, leaf = module.rpartition(".")
        if leaf not in FUSED_GROUPS:
            out[key] = value
            continue
        parts = FUSED_GROUPS[leaf]
        chunks = value.chunk(len(parts), dim=0) if rest.startswith("B") else [value] * len(parts)
        for part, chunk in zip(parts, chunks, strict=True):
            out[f"{head}.{part}.lora_{rest}"] = chunk.clone()  # one tensor per key: safetensors refuses shared storage
    return out


def fuse_lora_state(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Inverse of `unfuse_lora_state`; needs one shared A per q/k/v group (true for fused training)."""
    out = dict(state)
    for fused, parts in FUSED_GROUPS.items():
        heads = {k.rsplit(f".{parts[0]}.lora_A", 1)[0] for k in state if f".{parts[0]}.lora_A" in k}
        for head in sorted(heads):
            a_keys = [f"{head}.{p}.lora_A.weight" for p in parts]
            b_keys = [f"{head}.{p}.lora_B.weight" for p in parts]
            if not all(k in state for k in a_keys + b_keys):
                raise ValueError(f"{source}: {head} lacks one of {parts}; cannot load onto fused QKV")
            a = state[a_keys[0]]
            if not all(torch.equal(a, state[k]) for k in a_keys[1:]):
                raise ValueError(
                    f"{source}: q/k/v LoRAs of {head} do not share lora_A (not trained with fused QKV); "
                    "set fuse_qkv_projections: false to load it"
                )
            for k in a_keys + b_keys:
                del out[k]
            out[f"{head}.{fused}.lora_A.weight"] = a
            out[f"{head}.{fused}.lora_B.weight"] = torch.cat([state[k] for k in b_keys], dim=0)
    return out


def save_lora(transformer: FluxTransformer2DModel, out_dir: Path, params: Params) -> Path:
    """Write `pytorch_lora_weights.safetensors` loadable by `FluxKontextPipeline.load_lora_weights`."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    state = unfuse_lora_state(state)
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


def saved_lora_config(adapter_file: Path, state: dict[str, torch.Tensor], params: Params) -> LoraConfig:
    """The LoraConfig that fits a saved file: its own modules, rank and alpha (params as fallback)."""
    from safetensors import safe_open

    with safe_open(str(adapter_file), framework="pt") as handle:
        raw = (handle.metadata() or {}).get("lora_adapter_metadata")
    meta = {k.removeprefix("transformer."): v for k, v in json.loads(raw).items()} if raw else {}
    rank = int(meta.get("r", params.lora_rank))
    return LoraConfig(
        r=rank,
        lora_alpha=float(meta.get("lora_alpha", params.effective_lora_alpha)),
        target_modules=sorted({k.split(".lora_")[0] for k in state}),
    )


def attach_saved_lora(transformer: FluxTransformer2DModel, adapter_file: Path, params: Params) -> None:
    """Re-create the live adapter on a (quantized) transformer from a saved diffusers LoRA file.

    `load_lora_weights` cannot target a quanto-quantized transformer, so the adapter is injected
    with peft (on exactly the modules the file holds) and its weights set directly.
    """
    if not Path(adapter_file).exists():
        raise FileNotFoundError(f"{adapter_file}: no adapter file")
    state = load_file(str(adapter_file))
    prefix = "transformer."
    state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    if is_fused(transformer):
        state = fuse_lora_state(state, Path(adapter_file))
    transformer.add_adapter(saved_lora_config(Path(adapter_file), state, params))
    incompatible = set_peft_model_state_dict(transformer, state)
    unexpected = getattr(incompatible, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{adapter_file}: keys not in the model: {unexpected[:3]}")
    transformer.requires_grad_(False)
