"""`kontext edit`: base model + adapter (registry URI or local folder) -> an edited image."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import torch
from diffusers import FluxKontextPipeline

from kontext_core.cache.text_cache import sequence_length
from kontext_core.config import Params
from kontext_core.data.images import open_rgb
from kontext_core.fsutil import atomic_path
from kontext_core.model.edit import MAX_AREA, load_adapter, output_size  # noqa: F401  (the edit API)

log = logging.getLogger(__name__)



def resolve_adapter(model: str, params: Params | None, workdir: Path) -> tuple[str, str | None]:
    """(adapter path, base model recorded with it) for a models:/ or runs:/ URI or a local path."""
    if model.startswith(("models:/", "runs:/")):
        if params is not None:
            from kontext_core.tracking.runs import open_store

            open_store(params, workdir)
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
            from kontext_core.model.source import resolve_model_source

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
        max_sequence_length=sequence_length(params),
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    out = Path(out)
    with atomic_path(out) as tmp:
        result.save(tmp, format="PNG")
    return out
