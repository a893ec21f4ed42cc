"""The register stage's work: lineage onto the run, the pyfunc version, the fair champion decision."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import torch
from PIL import Image

from kontext_core.config import Params
from kontext_core.model.export import KOHYA_FILE, export_kohya, kohya_exportable
from kontext_core.tracking.registry import Registration, register_adapter


def example_from_eval_set(workdir: Path, params: Params, load: Callable[[str], Image.Image]) -> Any:
    """The first eval pair's reference, conditioned as validation conditions it, with its caption."""
    from kontext_core.tracking.model_log import input_example
    from kontext_core.validate.run import conditioned_inputs
    from kontext_core.validate.validation import eval_pairs

    pair = eval_pairs(workdir)[0]
    reference, _, caption = conditioned_inputs(pair, load, params.conditioning_multidataset_sampling)
    return input_example(reference, caption)


def make_rescorer(
    params: Params, workdir: Path, base_transformer: Callable[[], torch.nn.Module], load: Callable[[str], Image.Image]
) -> Callable[[Path], dict[str, float]]:
    """Score another adapter (the champion) exactly as validation scored this run's adapter."""

    def rescore(adapter_dir: Path) -> dict[str, float]:
        from kontext_core.model.load import training_device
        from kontext_core.validate.eval_loss import load_eval_set
        from kontext_core.validate.score import attach, score
        from kontext_core.validate.validation import build_pipeline, eval_pairs

        pairs = eval_pairs(workdir)
        eval_set = load_eval_set(workdir, params, pairs)
        pipe = build_pipeline(params, workdir, base_transformer())
        attach(pipe, adapter_dir, params)
        from kontext_core.validate.metrics import metric

        # Edits are only needed when the registry ranks by an image metric.
        with_images = metric(params.registry.metric).compute is not None
        return score(pipe, eval_set, pairs, load, params, training_device(), with_images=with_images).metrics()

    return rescore


def register_version(
    params: Params,
    workdir: Path,
    run_id: str,
    adapter_dir: Path,
    validate_dir: Path,
    metrics: dict[str, float],
    base_transformer: Callable[[], torch.nn.Module],
    load: Callable[[str], Image.Image],
) -> Registration:
    from kontext_core.tracking.lineage import dvc_tags, log_dataset_inputs, log_run_files
    from kontext_core.tracking.model_card import CARD_ARTIFACT, write_model_card
    from kontext_core.tracking.model_log import log_edit_model
    from kontext_core.tracking.runs import set_tags

    client = mlflow.MlflowClient()
    log_dataset_inputs(client, run_id, workdir, params.eval_dataset_id)
    log_run_files(client, run_id, workdir, params)
    set_tags(run_id, dvc_tags(workdir))
    fingerprint = json.loads((validate_dir / "eval_set.json").read_text())["fingerprint"]
    example = example_from_eval_set(workdir, params, load)
    with tempfile.TemporaryDirectory(prefix="kontext-kohya-") as tmp:
        # A LoRA or LyCORIS version carries the kohya file too (ComfyUI reads its alpha; the diffusers
        # file's it ignores), and every version its model card (README.md + images/), which
        # `kontext export --format hub` ships.
        extra: dict[str, Path] = {}
        if kohya_exportable(adapter_dir):
            extra["kohya"] = export_kohya(adapter_dir, Path(tmp) / KOHYA_FILE)
        card = Path(tmp) / CARD_ARTIFACT
        extra[CARD_ARTIFACT] = write_model_card(params, workdir, adapter_dir, validate_dir, metrics, card)
        return register_adapter(
            params,
            run_id,
            adapter_dir,
            lambda: log_edit_model(params, run_id, adapter_dir, workdir, example, extra),
            metrics,
            fingerprint,
            make_rescorer(params, workdir, base_transformer, load),
        )
