"""optimum-quanto quantization of the transformer, block by block, saved once and reloaded the same way.

What stays in full precision follows SimpleTuner's Flux list: the input/output projections
(`x_embedder`, `context_embedder`, top-level `proj_out`), the final `norm_out`, the small timestep/
guidance/text embedders and every norm layer. The blocks' linear layers (attention, feed-forwards, the
AdaLN modulation `norm*.linear` and the single blocks' `proj_out`) are quantized: they hold almost all
of the 12B parameters.

Quantization streams (`quantize_streaming`): the base transformer is a skeleton on the meta device;
each part (the embedders and heads, then every block; kontext_core.model.blocks) is read lazily from
the base weights, fused (optionally), quantized, frozen and written to its own shard, then dropped.
Peak host memory is one block's, whatever the depth. `load_quantized` rebuilds the model the same way,
block by block onto the target device. The quantized tensors are those of quantizing the whole model
at once (`quantize_transformer`), byte for byte: quanto's patterns see the same full module names.

The saved folder: `config.json`, one safetensors shard per part plus
`diffusion_pytorch_model.safetensors.index.json` (the hub's own sharded layout), quanto's
`quantization_map.json` and `layout.json` (precision, fused QKV, format).
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxTransformer2DModel
from optimum.quanto import freeze, qfloat8, qint2, qint4, qint8, quantization_map, quantize, requantize
from safetensors.torch import save_file

from kontext_core.fsutil import atomic_dir
from kontext_core.model.blocks import REST, Part, materialise, model_parts, part_count, release_part
from kontext_core.model.build_lock import MODEL_BUILD_LOCK, building
from kontext_core.model.fusion import fuse_qkv, is_fused
from kontext_core.model.weights import INDEX_FILE, LazyWeights, WeightsError

log = logging.getLogger(__name__)

QUANTO_WEIGHTS = {"int8-quanto": qint8, "fp8-quanto": qfloat8, "int4-quanto": qint4, "int2-quanto": qint2}

# fnmatch patterns over full module names (quanto matches each module's own name, not its parents').
# Per-block quantization sees the same full names (blocks.py's views), so `proj_out` keeps meaning the
# model's output layer only and the single blocks' `proj_out` is quantized, as in a whole-model pass.
EXCLUDE_PATTERNS = [
    "x_embedder",
    "context_embedder",
    "proj_out",
    "norm_out*",
    "time_text_embed*",
    "*.norm",
    "*.norm.norm",
    "*.norm1.norm",
    "*.norm1_context.norm",
    "*.norm2",
    "*.norm2_context",
    "*.norm_q",
    "*.norm_k",
    "*.norm_added_q",
    "*.norm_added_k",
]

QMAP_FILE = "quantization_map.json"
LAYOUT_FILE = "layout.json"
# 2: one shard per part + index (1 was one whole-model file); a folder in another format is re-made.
LAYOUT_FORMAT = 2


def _check_precision(precision: str) -> None:
    if precision not in QUANTO_WEIGHTS:
        raise ValueError(f"base_model_precision = {precision!r}: allowed: no_change, {', '.join(QUANTO_WEIGHTS)}")


@building
def quantize_transformer(model: FluxTransformer2DModel, precision: str) -> FluxTransformer2DModel:
    """Quantize and freeze in place; must happen after QKV fusion and before any adapter is added."""
    if precision == "no_change":
        return model
    _check_precision(precision)
    quantize(model, weights=QUANTO_WEIGHTS[precision], exclude=EXCLUDE_PATTERNS)
    freeze(model)
    model.requires_grad_(False)
    return model


@building
def quantize_part(part: Part, precision: str) -> None:
    """`quantize_transformer` for one part: the same patterns over the same full names."""
    _check_precision(precision)
    quantize(part.view, weights=QUANTO_WEIGHTS[precision], exclude=EXCLUDE_PATTERNS)
    freeze(part.view)
    part.view.requires_grad_(False)


def quantized_module_names(model: torch.nn.Module) -> list[str]:
    return sorted(quantization_map(model))


def shard_name(index: int, count: int) -> str:
    return f"diffusion_pytorch_model-{index + 1:05d}-of-{count:05d}.safetensors"


def _clean_config(config: dict[str, Any]) -> dict[str, Any]:
    # diffusers records where the model was loaded from (`_name_or_path`, an absolute path): that
    # would make this hashed output, and everything downstream, depend on where the project lives.
    return {k: v for k, v in config.items() if k != "_name_or_path"}


def _write_parts(
    tmp: Path,
    model: FluxTransformer2DModel,
    parts: Iterable[tuple[Part, dict[str, torch.Tensor]]],
    precision: str,
    fused: bool,
) -> dict[str, dict[str, str]]:
    """Shards, index, quantization map, layout and config; returns the quantization map."""
    count = part_count(model)
    weight_map: dict[str, str] = {}
    qmap: dict[str, dict[str, str]] = {}
    total = 0
    # No enumerate: it keeps its last (index, item) tuple alive until the next item has been made,
    # which would hold the previous part's tensors while the next one is built.
    index = -1
    for item in parts:
        index += 1
        part, state = item
        del item
        name = shard_name(index, count)
        save_file(state, tmp / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(state, name))
        total += sum(t.numel() * t.element_size() for t in state.values())
        qmap.update(quantization_map(part.view))
        del part, state  # before the next part is built: one part in memory at a time
    index_doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / INDEX_FILE).write_text(json.dumps(index_doc, indent=2, sort_keys=True) + "\n")
    (tmp / QMAP_FILE).write_text(json.dumps(qmap, indent=2, sort_keys=True))
    layout = {"base_model_precision": precision, "fuse_qkv_projections": fused, "format": LAYOUT_FORMAT}
    (tmp / LAYOUT_FILE).write_text(json.dumps(layout, indent=2, sort_keys=True))
    (tmp / "config.json").write_text(json.dumps(_clean_config(dict(model.config)), indent=2, sort_keys=True) + "\n")
    return qmap


def _return_freed_memory() -> None:
    """Free a finished block now (modules hold reference cycles) and hand glibc's freed heap pages back
    to the OS, so the next block reuses memory instead of growing the process (measured: flat peak RSS
    from 1+2 to 2+4 real-width blocks, bench/real_width.py)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _cpu_state(view: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.to("cpu").contiguous() for k, v in view.state_dict().items()}


def save_quantized(model: FluxTransformer2DModel, out_dir: Path, precision: str) -> None:
    """An already quantized model in memory, written in the streamed layout (same files)."""
    with atomic_dir(Path(out_dir)) as tmp:
        parts = ((part, _cpu_state(part.view)) for part in model_parts(model))
        _write_parts(tmp, model, parts, precision, is_fused(model))


@building
def skeleton(config: dict[str, Any]) -> FluxTransformer2DModel:
    """The transformer with every tensor on the meta device: structure only, no memory."""
    with torch.device("meta"):
        return FluxTransformer2DModel.from_config(config).eval()


def quantize_streaming(
    source: Path,
    out_dir: Path,
    precision: str,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    fuse: bool = False,
) -> int:
    """Quantize the transformer in folder `source` (config + weights, one file or sharded) part by part
    into `out_dir`; each part is computed in `dtype` on `device`. Returns the number of quantized modules."""
    _check_precision(precision)
    source, device = Path(source), device or torch.device("cpu")
    weights = LazyWeights(source)
    model = skeleton(FluxTransformer2DModel.load_config(source))
    extra = weights.keys() - set(model.state_dict())
    if extra:
        raise WeightsError(f"{source}: tensors the config's model does not have: {sorted(extra)[:3]}")

    def quantized_parts() -> Iterable[tuple[Part, dict[str, torch.Tensor]]]:
        for part in model_parts(model):
            # Per part, not per stage: a cache stage's model load on another thread waits one block.
            with MODEL_BUILD_LOCK:
                materialise(part, weights, dtype, device)
                if fuse:
                    fuse_qkv(part.view)
                quantize_part(part, precision)
            yield part, _cpu_state(part.view)
            release_part(model, part)
            _return_freed_memory()
            log.debug("quantized %s", part.name)

    with atomic_dir(Path(out_dir)) as tmp:
        qmap = _write_parts(tmp, model, quantized_parts(), precision, fuse)
    return len(qmap)


def _part_of(key: str) -> str:
    head = key.split(".", 2)
    return f"{head[0]}.{head[1]}" if head[0] in ("transformer_blocks", "single_transformer_blocks") else REST


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: missing; re-run the quantize stage") from exc
    except ValueError as exc:
        raise WeightsError(f"{path}: not valid JSON ({exc}); re-run the quantize stage") from exc


@building
def load_quantized(model_dir: Path, device: torch.device | None = None) -> FluxTransformer2DModel:
    """Rebuild the saved quantized transformer part by part with quanto's `requantize`, each part
    straight onto `device` (no quantization pass is run, no whole-model copy is held on the host)."""
    model_dir, device = Path(model_dir), device or torch.device("cpu")
    layout = _read_json(model_dir / LAYOUT_FILE)
    if layout.get("format") != LAYOUT_FORMAT:
        raise WeightsError(
            f"{model_dir / LAYOUT_FILE}: format {layout.get('format')!r}, this code reads {LAYOUT_FORMAT}; "
            "re-run the quantize stage"
        )
    qmap = _read_json(model_dir / QMAP_FILE)
    if not (model_dir / INDEX_FILE).exists():
        raise FileNotFoundError(f"{model_dir / INDEX_FILE}: missing; re-run the quantize stage")
    weights = LazyWeights(model_dir)
    model = skeleton(FluxTransformer2DModel.load_config(model_dir))
    by_part: dict[str, list[str]] = {}
    for key in weights.keys():
        by_part.setdefault(_part_of(key), []).append(key)
    for part in model_parts(model):
        if layout.get("fuse_qkv_projections"):
            fuse_qkv(part.view)
        keys = by_part.pop(part.name, [])
        state = weights.read(keys)
        part_qmap = {name: q for name, q in qmap.items() if _part_of(name + ".") == part.name}
        # requantize loads with strict=False: a key mismatch would leave uninitialised weights behind.
        requantize(part.view, state, part_qmap, device=device)
        expected = set(part.view.state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise WeightsError(
                f"{model_dir}: {part.name} does not match the model (missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}); re-run the quantize stage"
            )
    if by_part:
        raise WeightsError(f"{model_dir}: weights for parts the model does not have: {sorted(by_part)[:3]}")
    model.requires_grad_(False)
    return model.eval()
