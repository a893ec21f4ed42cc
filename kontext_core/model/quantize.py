"""optimum-quanto quantization of the transformer, saved once and reloaded without re-quantizing.

What stays in full precision follows SimpleTuner's Flux list: the input/output projections
(`x_embedder`, `context_embedder`, top-level `proj_out`), the final `norm_out`, the small timestep/
guidance/text embedders and every norm layer. The blocks' linear layers (attention, feed-forwards, the
AdaLN modulation `norm*.linear` and the single blocks' `proj_out`) are quantized: they hold almost all
of the 12B parameters.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel
from optimum.quanto import freeze, qfloat8, qint2, qint4, qint8, quantization_map, quantize, requantize
from safetensors.torch import load_file, save_file

from kontext_core.fsutil import atomic_dir
from kontext_core.model.build_lock import building
from kontext_core.model.fusion import fuse_qkv, is_fused

log = logging.getLogger(__name__)

QUANTO_WEIGHTS = {"int8-quanto": qint8, "fp8-quanto": qfloat8, "int4-quanto": qint4, "int2-quanto": qint2}

# fnmatch patterns over full module names (quanto matches each module's own name, not its parents').
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

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
QMAP_FILE = "quantization_map.json"
LAYOUT_FILE = "layout.json"


@building
def quantize_transformer(model: FluxTransformer2DModel, precision: str) -> FluxTransformer2DModel:
    """Quantize and freeze in place; must happen after QKV fusion and before any adapter is added."""
    if precision == "no_change":
        return model
    if precision not in QUANTO_WEIGHTS:
        raise ValueError(f"base_model_precision = {precision!r}: allowed: no_change, {', '.join(QUANTO_WEIGHTS)}")
    quantize(model, weights=QUANTO_WEIGHTS[precision], exclude=EXCLUDE_PATTERNS)
    freeze(model)
    model.requires_grad_(False)
    return model


def quantized_module_names(model: torch.nn.Module) -> list[str]:
    return sorted(quantization_map(model))


def save_quantized(model: FluxTransformer2DModel, out_dir: Path, precision: str) -> None:
    """Config + safetensors weights + quanto's quantization map + how the modules were laid out."""
    with atomic_dir(Path(out_dir)) as tmp:
        model.save_config(tmp)
        # diffusers records where the model was loaded from (`_name_or_path`, an absolute path): that
        # would make this hashed output, and everything downstream, depend on where the project lives.
        config_file = tmp / "config.json"
        config = json.loads(config_file.read_text())
        config.pop("_name_or_path", None)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS_FILE, metadata={"base_model_precision": precision})
        (tmp / QMAP_FILE).write_text(json.dumps(quantization_map(model), indent=2, sort_keys=True))
        layout = {"base_model_precision": precision, "fuse_qkv_projections": is_fused(model)}
        (tmp / LAYOUT_FILE).write_text(json.dumps(layout, indent=2, sort_keys=True))


@building
def load_quantized(model_dir: Path, device: torch.device | None = None) -> FluxTransformer2DModel:
    """Rebuild the saved quantized transformer with `requantize` (no quantization pass is run)."""
    model_dir = Path(model_dir)
    for name in (WEIGHTS_FILE, QMAP_FILE, LAYOUT_FILE):
        if not (model_dir / name).exists():
            raise FileNotFoundError(f"{model_dir / name}: missing; re-run the quantize stage")
    layout = json.loads((model_dir / LAYOUT_FILE).read_text())
    config = FluxTransformer2DModel.load_config(model_dir)
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(config)
    if layout.get("fuse_qkv_projections"):
        fuse_qkv(model)
    state = load_file(model_dir / WEIGHTS_FILE)
    qmap = json.loads((model_dir / QMAP_FILE).read_text())
    requantize(model, state, qmap, device=device or torch.device("cpu"))
    # requantize loads with strict=False: a key mismatch would leave uninitialised weights behind.
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"{model_dir / WEIGHTS_FILE}: does not match the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    model.requires_grad_(False)
    return model.eval()
