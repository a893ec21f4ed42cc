"""optimum-quanto quantization of the transformer, saved once and reloaded without re-quantizing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel
from optimum.quanto import freeze, qfloat8, qint2, qint4, qint8, quantization_map, quantize, requantize
from safetensors.torch import load_file, save_file

from kontext_core.fsutil import atomic_dir

log = logging.getLogger(__name__)

QUANTO_WEIGHTS = {"int8-quanto": qint8, "fp8-quanto": qfloat8, "int4-quanto": qint4, "int2-quanto": qint2}

# Norms, embedders and the output projection stay in full precision: quantizing them costs
# accuracy for little memory, and peft adapters are never attached to them.
EXCLUDE_PATTERNS = ["*norm*", "x_embedder", "context_embedder", "time_text_embed*", "*proj_out"]

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
QMAP_FILE = "quantization_map.json"


def quantize_transformer(model: FluxTransformer2DModel, precision: str) -> FluxTransformer2DModel:
    """Quantize and freeze in place; must happen before any adapter is added."""
    if precision == "no_change":
        return model
    quantize(model, weights=QUANTO_WEIGHTS[precision], exclude=EXCLUDE_PATTERNS)
    freeze(model)
    model.requires_grad_(False)
    return model


def save_quantized(model: FluxTransformer2DModel, out_dir: Path, precision: str) -> None:
    with atomic_dir(Path(out_dir)) as tmp:
        model.save_config(tmp)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS_FILE, metadata={"base_model_precision": precision})
        (tmp / QMAP_FILE).write_text(json.dumps(quantization_map(model), indent=2, sort_keys=True))


def load_quantized(model_dir: Path, device: torch.device | None = None) -> FluxTransformer2DModel:
    model_dir = Path(model_dir)
    config = FluxTransformer2DModel.load_config(model_dir)
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(config)
    qmap = json.loads((model_dir / QMAP_FILE).read_text())
    requantize(model, load_file(model_dir / WEIGHTS_FILE), qmap, device=device or torch.device("cpu"))
    model.requires_grad_(False)
    return model.eval()
