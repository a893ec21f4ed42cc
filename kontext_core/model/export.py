"""Export a diffusers-format LoRA to the kohya layout (what ComfyUI and most UIs read), alpha included.

A diffusers LoRA file keeps its alpha in the header metadata; ComfyUI ignores that and reads a
`.alpha` tensor per module, assuming alpha = rank when there is none, so a LoRA trained with
alpha != rank would load at the wrong strength. The kohya layout names each module
`lora_transformer_<module path with _>` with `lora_down` (= lora_A), `lora_up` (= lora_B) and
`alpha`; diffusers' `load_lora_weights` reads it too, which is how the export is tested.

diffusers maps only the attention modules of this layout (and the top-level embedders); an adapter
with block feed-forwards (`flux_lora_target: all+ffs`, the demo's) is still written whole, with a note that
diffusers' reader will refuse it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kontext_core.fsutil import atomic_path

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "kontext_lora_kohya.safetensors"
PREFIX = "lora_transformer_"
# Block modules diffusers' reader of the `lora_transformer_` layout has no mapping for.
UNMAPPED_BLOCK_MODULES = (".ff.", ".ff_context.", ".proj_mlp", ".proj_out")

log = logging.getLogger(__name__)


def lora_alpha_and_rank(adapter_file: Path) -> tuple[float | None, int | None]:
    with safe_open(str(adapter_file), framework="pt") as handle:
        raw = (handle.metadata() or {}).get("lora_adapter_metadata")
    if not raw:
        return None, None
    meta = {k.removeprefix("transformer."): v for k, v in json.loads(raw).items()}
    alpha = meta.get("lora_alpha")
    rank = meta.get("r")
    return (float(alpha) if alpha is not None else None), (int(rank) if rank is not None else None)


def to_kohya(state: dict[str, torch.Tensor], alpha: float | None) -> dict[str, torch.Tensor]:
    """diffusers keys (`transformer.<module>.lora_A.weight`) -> kohya keys with one alpha per module."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, rest = key.removeprefix("transformer.").partition(".lora_")
        name = PREFIX + module.replace(".", "_")
        if rest == "A.weight":
            out[f"{name}.lora_down.weight"] = value.contiguous()
            rank = value.shape[0]
            out[f"{name}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank), dtype=value.dtype)
        elif rest == "B.weight":
            out[f"{name}.lora_up.weight"] = value.contiguous()
        else:
            raise ValueError(f"{key}: not a LoRA weight (expected lora_A / lora_B)")
    return out


def export_kohya(adapter: Path, out: Path) -> Path:
    """Write the kohya-layout file for a diffusers LoRA folder or file."""
    adapter = Path(adapter)
    source = adapter / LORA_FILE if adapter.is_dir() else adapter
    if not source.exists():
        raise FileNotFoundError(
            f"{adapter}: no {LORA_FILE} (kohya export is for standard LoRA; LyCORIS files are read by UIs as they are)"
        )
    alpha, _ = lora_alpha_and_rank(source)
    weights = load_file(str(source))
    unmapped = sorted(
        {k.partition(".lora_")[0] for k in weights if "blocks." in k and any(m in k for m in UNMAPPED_BLOCK_MODULES)}
    )
    if unmapped:
        log.info(
            "%s: %d block feed-forward modules (e.g. %s) are exported, but diffusers' load_lora_weights does not "
            "map them in this layout (train with flux_lora_target: all for a file diffusers loads)",
            source,
            len(unmapped),
            unmapped[0].removeprefix("transformer."),
        )
    state = to_kohya(weights, alpha)
    with atomic_path(Path(out)) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "ss_network_module": "networks.lora"})
    return Path(out)
