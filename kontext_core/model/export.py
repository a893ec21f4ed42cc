"""Export an adapter for ComfyUI and the other UIs that read the kohya layout, every trained module kept.

Standard LoRA -> kohya keys on the original (BFL) Flux module names (kontext_core.model.flux_names):
`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` / `.lora_up.weight` / `.alpha`. A module
with one BFL counterpart is renamed. Separate projections that BFL fuses (q/k/v -> `qkv`; a single
block's q/k/v + `proj_mlp` -> `linear1`) become one LoRA of the fused module: the parts' `lora_down`
stacked, their `lora_up` placed block-diagonally on their output rows (a part the adapter did not train
is a zero block), with the alpha that keeps each part's alpha/rank scale. The fused LoRA's weight delta
equals the parts' deltas stacked, so nothing is dropped and nothing changes strength.

A diffusers LoRA file keeps its alpha in the header metadata, which ComfyUI ignores (it then assumes
alpha = rank): every module here carries its `.alpha` tensor.

LyCORIS (LoKr, LoHa, ...) -> its own keys, `lycoris_<diffusers module>.<param>` with per-module
`alpha`: ComfyUI maps exactly these names onto the BFL modules (row slices of the fused ones, by its
`flux_to_diffusers` table). A Kronecker product per q/k/v has no single-LoKr form on the fused module,
so renaming to BFL names is not possible without expanding it to a full weight difference.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kontext_core.fsutil import atomic_path
from kontext_core.model.flux_names import Target, bfl_target, kohya_name, part_rows

LORA_FILE = "pytorch_lora_weights.safetensors"
LYCORIS_FILE = "lycoris_weights.safetensors"
KOHYA_FILE = "kontext_lora_kohya.safetensors"
LYCORIS_PREFIX = "lycoris_"

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


def lora_modules(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """diffusers keys (`transformer.<module>.lora_A.weight`) -> {module: (A, B)}."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module, _, rest = key.removeprefix("transformer.").partition(".lora_")
        if rest not in ("A.weight", "B.weight"):
            raise ValueError(f"{key}: not a LoRA weight (expected lora_A / lora_B)")
        found.setdefault(module, {})[rest[0]] = value
    missing = sorted(m for m, ab in found.items() if set(ab) != {"A", "B"})
    if missing:
        raise ValueError(f"{missing[0]}: lora_A or lora_B is missing")
    return {m: (ab["A"], ab["B"]) for m, ab in found.items()}


def to_kohya(state: dict[str, torch.Tensor], alpha: float | None) -> dict[str, torch.Tensor]:
    """A diffusers Flux LoRA state dict -> kohya keys on BFL module names, one alpha per module."""
    modules = lora_modules(state)
    fused_qkv = any(m.endswith("attn.to_qkv") for m in modules)
    groups: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    targets: dict[str, Target] = {}
    for module, (a, b) in sorted(modules.items()):
        target = bfl_target(module, fused_qkv)
        targets[target.module] = target
        groups.setdefault(target.module, {})[target.part] = (a, b)
    out: dict[str, torch.Tensor] = {}
    for bfl, parts in groups.items():
        target = targets[bfl]
        down, up, scale = _fused(target, parts, alpha) if target.fused else _single(target, parts[""], alpha)
        name = kohya_name(bfl)
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(scale * down.shape[0], dtype=down.dtype)
    return out


def _single(target: Target, ab: tuple[torch.Tensor, torch.Tensor], alpha: float | None) -> tuple:
    a, b = ab
    if target.swap_halves:
        first, second = b.chunk(2, dim=0)
        b = torch.cat([second, first], dim=0)
    rank = a.shape[0]
    return a, b, (alpha if alpha is not None else rank) / rank


def _fused(target: Target, parts: dict[str, tuple[torch.Tensor, torch.Tensor]], alpha: float | None) -> tuple:
    """Stacked downs, block-diagonal ups; each part keeps its alpha/rank scale (folded in if they differ)."""
    any_a, any_b = next(iter(parts.values()))
    hidden, dtype = any_a.shape[1], any_a.dtype
    ranks = {p: ab[0].shape[0] for p, ab in parts.items()}
    scales = {p: (alpha if alpha is not None else r) / r for p, r in ranks.items()}
    one_scale = len(set(scales.values())) == 1
    filler_rank = next(iter(ranks.values()))
    downs, blocks = [], []
    for part in target.parts:
        rows = part_rows(part, hidden)
        if part in parts:
            a, b = parts[part]
            if b.shape[0] != rows:
                raise ValueError(f"{target.module}: {part} has {b.shape[0]} output rows, expected {rows}")
            downs.append(a)
            blocks.append(b if one_scale else b * scales[part])
        else:  # not trained: a zero block keeps the rows of the fused module in place
            downs.append(torch.zeros(filler_rank, hidden, dtype=dtype))
            blocks.append(torch.zeros(rows, filler_rank, dtype=dtype))
    scale = next(iter(scales.values())) if one_scale else 1.0
    return torch.cat(downs, dim=0), torch.block_diag(*blocks).to(dtype), scale


def lycoris_modules(state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """{diffusers module: its LyCORIS parameter names} of a LyCORIS file (`lycoris_<module with _>.<param>`)."""
    found: dict[str, list[str]] = {}
    for key in state:
        if not key.startswith(LYCORIS_PREFIX):
            raise ValueError(f"{key}: not a LyCORIS key (expected {LYCORIS_PREFIX}<module>.<param>)")
        module, _, param = key.partition(".")
        found.setdefault(module, []).append(param)
    return found


def export_kohya(adapter: Path, out: Path) -> Path:
    """Write the export of a LoRA or LyCORIS folder or file (see the module doc)."""
    adapter = Path(adapter)
    source = _weights_file(adapter)
    assert source is not None  # required=True raises instead
    weights = load_file(str(source))
    if source.name == LYCORIS_FILE or any(k.startswith(LYCORIS_PREFIX) for k in weights):
        state, metadata = dict(weights), {"format": "pt", "ss_network_module": "lycoris.kohya"}
        count = len(lycoris_modules(state))
        log.info("%s: LyCORIS adapter: %d modules under their lycoris_ names (ComfyUI maps them)", source, count)
    else:
        alpha, _ = lora_alpha_and_rank(source)
        state, metadata = to_kohya(weights, alpha), {"format": "pt", "ss_network_module": "networks.lora"}
        log.info("%s: %d LoRA modules -> %d kohya (BFL) modules", source, len(lora_modules(weights)), len(state) // 3)
    with atomic_path(Path(out)) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(out)


def kohya_exportable(adapter: Path) -> bool:
    """Whether `adapter` holds a LoRA or LyCORIS file (another adapter kind has no kohya form)."""
    return _weights_file(Path(adapter), required=False) is not None


def _weights_file(adapter: Path, required: bool = True) -> Path | None:
    if adapter.is_file():
        return adapter
    for name in (LORA_FILE, LYCORIS_FILE):
        if (adapter / name).exists():
            return adapter / name
    if not required:
        return None
    raise FileNotFoundError(f"{adapter}: neither {LORA_FILE} nor {LYCORIS_FILE} in this folder")
