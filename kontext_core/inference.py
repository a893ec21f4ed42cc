"""`kontext edit`: base model + adapter (registry URI or local folder) -> an edited image."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import mlflow
import torch
from diffusers import FluxKontextPipeline

from kontext_core.config import Params
from kontext_core.data.images import open_rgb
from kontext_core.fsutil import atomic_path

log = logging.getLogger(__name__)

MAX_AREA = 1024 * 1024


def resolve_adapter(model: str, params: Params | None, workdir: Path) -> tuple[str, str | None]:
    """(adapter path, base model recorded with it) for a models:/ or runs:/ URI or a local path."""
    if model.startswith(("models:/", "runs:/")):
        if params is not None:
            from kontext_core.tracking.runs import tracking_uri, use_store

            use_store(tracking_uri(params, workdir))
        return registered_adapter(model, workdir)
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"--model {model}: no such adapter file or folder (or use a models:/ URI)")
    return str(path), None


def registered_adapter(model: str, workdir: Path) -> tuple[str, str | None]:
    """Download a registered version's adapter; its base resolved from the portable record."""
    import tempfile

    from mlflow.models.model import MODEL_CONFIG

    from kontext_core.tracking.pyfunc_model import resolve_base_model
    from kontext_core.tracking.registry import download_adapter

    dest = Path(tempfile.mkdtemp(prefix="kontext-adapter-"))
    adapter = download_adapter(model, dest)
    root = adapter
    while not (root / "MLmodel").exists() and root != dest:
        root = root.parent
    config = mlflow.models.Model.load(str(root)).flavors["python_function"].get(MODEL_CONFIG) or {}
    base = config.get("base_model")
    return str(adapter), resolve_base_model(base, str(workdir))[0] if base else None


def load_adapter(pipe: FluxKontextPipeline, adapter: Path) -> str:
    """Apply a saved adapter (a folder or a file) to a pipeline; returns its format.

    diffusers LoRA files go through the stock `load_lora_weights`; LyCORIS files (LoKr, ...) are
    rebuilt from their weights with lycoris-lora and patched onto the transformer.
    """
    from kontext_core.model.lycoris import attach_saved_lycoris, find_lycoris_file

    lycoris_file = find_lycoris_file(adapter)
    if lycoris_file is not None:
        attach_saved_lycoris(pipe.transformer, lycoris_file)
        return "lycoris"
    if adapter.is_dir():
        weights = sorted(p.name for p in adapter.glob("*.safetensors"))
        if not weights:
            raise FileNotFoundError(f"--model {adapter}: folder holds no .safetensors adapter")
        name = "pytorch_lora_weights.safetensors" if "pytorch_lora_weights.safetensors" in weights else weights[0]
        pipe.load_lora_weights(str(adapter), weight_name=name)
    else:
        pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
    return "lora"


def output_size(width: int, height: int, max_area: int = MAX_AREA) -> tuple[int, int]:
    """The input's size, scaled down to `max_area` if larger, edges floored to multiples of 16."""
    scale = min(1.0, math.sqrt(max_area / (width * height)))
    return max(16, int(width * scale) // 16 * 16), max(16, int(height * scale) // 16 * 16)


def run_edit(
    model: str,
    image: Path,
    prompt: str,
    out: Path,
    params: Params | None,
    workdir: Path,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    base_model: str | None = None,
) -> Path:
    adapter, recorded_base = resolve_adapter(model, params, workdir)
    if base_model is None:
        if recorded_base is not None:
            base_model = recorded_base
        elif params is not None:
            from kontext_core.model.load import resolve_model_source

            base_model = resolve_model_source(params, workdir)
        else:
            raise ValueError("no base model: pass --base-model or a params file")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    # The adapter goes into the unquantized base: loading a LoRA into a quanto model is not supported.
    pipe = FluxKontextPipeline.from_pretrained(base_model, torch_dtype=dtype)
    load_adapter(pipe, Path(adapter))
    if params is not None:
        from kontext_core.model.load import place_pipeline

        pipe = place_pipeline(pipe, params, torch.device(device))
    else:
        pipe = pipe.to(device)
    source = open_rgb(image)
    width, height = output_size(source.width, source.height)
    result = pipe(
        image=source.resize((width, height)),
        prompt=prompt,
        width=width,
        height=height,
        max_area=width * height,
        _auto_resize=False,
        guidance_scale=guidance if guidance is not None else (params.validation_guidance if params else 2.5),
        num_inference_steps=steps or (params.validation_num_inference_steps if params else 28),
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    out = Path(out)
    with atomic_path(out) as tmp:
        result.save(tmp, format="PNG")
    return out
