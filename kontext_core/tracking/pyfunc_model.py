"""The registered model as an MLflow pyfunc: an image and a prompt in, the edited image out.

Inputs (one row per edit): `image`, a base64 PNG/JPEG, and `prompt`. Edit settings are MLflow
params: `num_inference_steps`, `guidance_scale`, `seed`, `max_area`. Output: a column `image` of
base64 PNGs at the input's size (scaled down to `max_area`, edges multiples of 16). Prompts are
encoded to the T5 length the adapter was trained with (`max_sequence_length` in the model config).

The base model is recorded portably in the model config (`base_model`): a hub id with its revision,
or a path relative to a declared root (`base_model_root`: the project directory when loading, the
variable KONTEXT_BASE_MODEL_ROOT, or `model_config={"base_model_root": ...}` at load time), never
an absolute path of the machine that trained it.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import mlflow
from PIL import Image

ROOT_ENV = "KONTEXT_BASE_MODEL_ROOT"
DEFAULT_PARAMS: dict[str, Any] = {
    "num_inference_steps": 28,
    "guidance_scale": 2.5,
    "seed": 0,
    "max_area": 1024 * 1024,
    "max_sequence_length": 512,
}


def image_to_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def b64_to_image(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


def portable_base_model(source: str, revision: str | None, project: Path) -> dict[str, Any]:
    """How the version names its base: a hub id + revision, or a path under the project root."""
    path = Path(source).expanduser()
    local = path if path.is_absolute() else project / path
    if not local.exists():
        return {"hub_id": source, "revision": revision}
    try:
        relative = local.resolve().relative_to(Path(project).resolve()).as_posix()
        return {"path": relative, "root": "project"}
    except ValueError:
        # Outside the project: only the folder name travels; the loader names the root to set.
        return {"path": local.name, "root": ROOT_ENV}


def resolve_base_model(record: dict[str, Any], root: str | None = None) -> tuple[str, str | None]:
    """(path or hub id, revision) of a recorded base; a clear error when a local base is absent."""
    if "hub_id" in record:
        # The recorded commit's snapshot in the hub cache when it is there (HF_HOME as set now);
        # else the id pinned to that commit, for the hub to serve.
        from kontext_core.hub.resolve import resolve

        snapshot = resolve(record["hub_id"], record.get("revision"))
        if snapshot.path is not None:
            return str(snapshot.path), None
        return record["hub_id"], snapshot.commit
    candidates = [Path(r) for r in (root, os.environ.get(ROOT_ENV), os.getcwd()) if r]
    for candidate in candidates:
        if (candidate / record["path"] / "model_index.json").exists():
            return str(candidate / record["path"]), None
    raise FileNotFoundError(
        f"base model '{record['path']}' (a folder relative to the training project) was not found under "
        f"{', '.join(str(c) for c in candidates)}; run from the project directory, set {ROOT_ENV} to the "
        "folder that holds it, or load with model_config={'base_model_root': FOLDER}"
    )


class KontextEditModel(mlflow.pyfunc.PythonModel):
    """base model + adapter -> `FluxKontextPipeline` edits."""

    def load_context(self, context: Any) -> None:
        import torch
        from diffusers import FluxKontextPipeline

        from kontext_core.model.edit import load_adapter
        from kontext_core.tracking.artifact_check import check_adapter

        config = context.model_config or {}
        check_adapter(Path(context.artifacts["adapter"]), None, config.get("adapter_files"), "the logged edit model")
        base, revision = resolve_base_model(config["base_model"], config.get("base_model_root"))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        pipe = FluxKontextPipeline.from_pretrained(base, revision=revision, torch_dtype=dtype)
        load_adapter(pipe, Path(context.artifacts["adapter"]))
        # A served model answers requests; a per-request denoising bar would only flood its log.
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        self.defaults = {**DEFAULT_PARAMS, **config.get("defaults", {})}

    # No annotation on model_input: MLflow would read one as a schema; the signature is given explicitly.
    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd
        import torch

        from kontext_core.model.edit import output_size

        settings = {**self.defaults, **(params or {})}
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        outputs = []
        for row in rows:
            source = b64_to_image(row["image"])
            width, height = output_size(source.width, source.height, int(settings["max_area"]))
            result = self.pipe(
                image=source.resize((width, height)),
                prompt=row["prompt"],
                width=width,
                height=height,
                max_area=width * height,
                _auto_resize=False,
                guidance_scale=float(settings["guidance_scale"]),
                num_inference_steps=int(settings["num_inference_steps"]),
                max_sequence_length=int(settings["max_sequence_length"]),
                generator=torch.Generator("cpu").manual_seed(int(settings["seed"])),
            ).images[0]
            outputs.append(image_to_b64(result))
        return pd.DataFrame({"image": outputs})


def signature(defaults: dict[str, Any] | None = None) -> Any:
    """The pyfunc signature; its params' defaults are the model's own (`defaults`, as configured in
    `model_config`): MLflow fills every param a request leaves out from the schema, so a schema default
    that differed from the model's would silently override it."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    values = {**DEFAULT_PARAMS, **(defaults or {})}
    return ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "prompt")]),
        outputs=Schema([ColSpec("string", "image")]),
        params=ParamSchema(
            [
                ParamSpec("num_inference_steps", "long", values["num_inference_steps"]),
                ParamSpec("guidance_scale", "double", values["guidance_scale"]),
                ParamSpec("seed", "long", values["seed"]),
                ParamSpec("max_area", "long", values["max_area"]),
            ]
        ),
    )
