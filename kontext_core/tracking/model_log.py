"""Log the adapter as the pyfunc edit model: signature, an input example from the eval set, files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from PIL import Image

from kontext_core.cache.text_cache import sequence_length
from kontext_core.config import Params
from kontext_core.tracking.pyfunc_model import KontextEditModel, image_to_b64, portable_base_model, signature

# Sizes of the input example: small, so the registry stays light and the example edits quickly.
EXAMPLE_EDGE = 64


def input_example(reference: Image.Image, caption: str) -> Any:
    import pandas as pd

    image = reference.convert("RGB")
    if max(image.size) > EXAMPLE_EDGE:
        scale = EXAMPLE_EDGE / max(image.size)
        edge = lambda n: max(16, round(n * scale) // 16 * 16)  # noqa: E731
        image = image.resize((edge(image.width), edge(image.height)))
    return pd.DataFrame({"image": [image_to_b64(image)], "prompt": [caption]})


def log_edit_model(
    params: Params,
    run_id: str,
    adapter_dir: Path,
    project: Path,
    example: Any,
    extra_files: dict[str, Path] | None = None,
) -> Any:
    """Log the pyfunc edit model as an output of `run_id` (not registered: the registry step creates
    the version itself, tags and description in the same call); returns ModelInfo.

    The run is named, never made active: `mlflow.start_run(run_id=...)` would flip a FINISHED run back
    to RUNNING (and leave it so if killed).
    """
    import os

    import kontext_core
    from kontext_core.model.source import model_location
    from kontext_core.tracking.pyfunc_model import ROOT_ENV

    # A hub base is named by the commit it resolved to: the version loads the same weights after
    # `main` moves on.
    hub = model_location(params, project).hub
    base = (
        {"hub_id": hub.repo_id, "revision": hub.commit}
        if hub is not None
        else portable_base_model(params.pretrained_model_name_or_path, None, project)
    )
    artifacts = {"adapter": str(adapter_dir), **{k: str(v) for k, v in (extra_files or {}).items()}}
    # MLflow checks the input example by loading the model and predicting: it finds the base under
    # the project through the variable (never written into the model).
    saved = os.environ.get(ROOT_ENV)
    os.environ[ROOT_ENV] = str(project)
    try:
        from kontext_core.tracking.artifact_check import file_hashes

        # The served copy is checked against these when it loads (KontextEditModel.load_context).
        checked = {"adapter_files": file_hashes(Path(adapter_dir))}
        return _log(params, run_id, base, artifacts, example, str(Path(kontext_core.__file__).parent), checked)
    finally:
        if saved is None:
            os.environ.pop(ROOT_ENV, None)
        else:
            os.environ[ROOT_ENV] = saved


def requirements() -> list[str]:
    """Pinned to what trained the adapter; given explicitly, since inferring them loads the model again."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("torch", "diffusers", "transformers", "peft", "safetensors", "pillow", "pandas", "lycoris-lora"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def model_defaults(params: Params) -> dict[str, Any]:
    """The edit settings a request gets unless it names others (the validation's)."""
    return {
        "num_inference_steps": params.validation_num_inference_steps,
        "guidance_scale": params.validation_guidance,
        "max_sequence_length": sequence_length(params),
    }


def _log(
    params: Params, run_id: str, base: dict, artifacts: dict, example: Any, code: str, checked: dict[str, Any]
) -> Any:
    from mlflow.models import Model

    defaults = model_defaults(params)
    # What mlflow.pyfunc.log_model does, with the run given by id instead of an active run. The logged
    # model is made first in the run's experiment: left to itself, it would go to the active
    # experiment (the store's default one, whose files land in ./mlruns of the working directory).
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id=experiment_id, name="adapter", source_run_id=run_id)
    return Model.log(
        artifact_path=None,
        name="adapter",
        flavor=mlflow.pyfunc,
        run_id=run_id,
        model_id=logged.model_id,
        python_model=KontextEditModel(),
        artifacts=artifacts,
        model_config={
            "base_model": base,
            **checked,
            # Declared (empty) so that `load_model(..., model_config={"base_model_root": DIR})` may set it.
            "base_model_root": None,
            "defaults": defaults,
        },
        signature=signature(defaults),
        input_example=(example, {"num_inference_steps": params.validation_num_inference_steps}),
        # kontext_core travels with the model: it loads where the package is not installed.
        code_paths=[code],
        pip_requirements=requirements(),
    )
