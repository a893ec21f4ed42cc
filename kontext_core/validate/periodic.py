"""Validation during training: every `validation_step_interval` steps (SimpleTuner's
`validation_steps`), the live adapter edits up to `num_eval_images` eval pairs; PSNR and the
reference | output | target grids go to the MLflow run at that step.

It never touches the global random generators (the pipeline draws from its own seeded generator),
so a run with it trains exactly the adapter a run without it trains; the transformer is back in
train mode before the next step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxKontextPipeline
from PIL import Image

from kontext_core.config import Params
from kontext_core.validate.grids import make_grid
from kontext_core.validate.run import evaluate, grid_name, prompted_edits

LogMetric = Callable[[str, float, int], None]  # (key, value, step)
LogImage = Callable[[Image.Image, str], None]  # (image, artifact file)


def validation_pairs(pairs: list[dict], params: Params) -> list[dict]:
    """The eval pairs (as the validate stage picks them), at most `num_eval_images`."""
    chosen = [p for p in pairs if p["split"] == "eval"] or [p for p in pairs if p["split"] == "train"][:2]
    return chosen[: params.num_eval_images] if params.num_eval_images else chosen


class PeriodicValidation:
    def __init__(
        self,
        params: Params,
        transformer: torch.nn.Module,
        pairs: list[dict],
        load: Callable[[str], Image.Image],
        build_pipeline: Callable[[], FluxKontextPipeline],
        log_metric: LogMetric,
        log_image: LogImage,
        eval_loss: Callable[[], float] | None = None,
        prompts: dict[str, str] | None = None,
    ) -> None:
        self.params = params
        # The adapter's eval loss on the eval set (None: not scored), so the loss curve and the
        # samples line up by step.
        self.eval_loss = eval_loss
        # validation_prompt / user_prompt_library: shortname -> instruction, rendered on the references.
        self.prompts = prompts or {}
        self.transformer = transformer
        self.pairs = pairs
        self.load = load
        self.build_pipeline = build_pipeline
        self.log_metric = log_metric
        self.log_image = log_image
        self._pipe: FluxKontextPipeline | None = None
        self.steps: list[int] = []  # the steps validated so far

    def __call__(self, step: int) -> None:
        """After optimizer step `step` (1-based)."""
        interval = self.params.validation_step_interval
        if not interval or step % interval or not self.pairs:
            return
        if self._pipe is None:
            self._pipe = self.build_pipeline()
        self.transformer.eval()
        try:
            with torch.no_grad():
                results = evaluate(self._pipe, self.pairs, self.load, self.params)
                prompted = prompted_edits(self._pipe, self.pairs, self.load, self.params, self.prompts)
                loss = self.eval_loss() if self.eval_loss is not None else None
        finally:
            self.transformer.train()
        self.log_metric("val/psnr", sum(r.scores["psnr"] for r in results) / len(results), step)
        if loss is not None:
            self.log_metric("val/eval_loss", loss, step)
        for result in results:
            grid = make_grid([("reference", result.reference), ("lora", result.output), ("target", result.target)])
            self.log_image(grid, f"validation/step_{step:06d}/{grid_name(result.pair_id)}")
        for shortname, result in prompted:
            grid = make_grid([("reference", result.reference), (shortname, result.output)])
            self.log_image(grid, f"validation/step_{step:06d}/prompts/{shortname}/{grid_name(result.pair_id)}")
        self.steps.append(step)


def mlflow_periodic_validation(
    params: Params, workdir: Path, transformer: torch.nn.Module, run_id: str, device: torch.device
) -> PeriodicValidation | None:
    """The validation of a training run in `workdir`, logged to MLflow run `run_id` (None: off)."""
    if not params.validation_step_interval:
        return None
    import json

    from mlflow import MlflowClient

    from kontext_core.data.sources import open_ref
    from kontext_core.model.load import load_pipeline, place_pipeline

    pairs = validation_pairs(json.loads((workdir / "data/pair/pairs.json").read_text()), params)
    client = MlflowClient()

    def build() -> FluxKontextPipeline:
        pipe = place_pipeline(load_pipeline(params, workdir, transformer=transformer), params, device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def log_metric(key: str, value: float, step: int) -> None:
        client.log_metric(run_id, key, value, step=step)

    def log_image(image: Image.Image, artifact_file: str) -> None:
        client.log_image(run_id, image, artifact_file=artifact_file)

    def load(stored: str) -> Any:
        return open_ref(stored, workdir)

    from kontext_core.validate.eval_loss import compute_eval_loss, load_eval_set

    eval_set = load_eval_set(workdir, params, pairs)

    def eval_loss() -> float:
        return compute_eval_loss(transformer, eval_set, device).mean

    from kontext_core.validate.prompts import validation_prompts

    prompts = validation_prompts(params, workdir)
    return PeriodicValidation(params, transformer, pairs, load, build, log_metric, log_image, eval_loss, prompts)
