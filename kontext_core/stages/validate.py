"""validate: the base and the adapter scored on the eval pairs: eval loss, every registered image metric
(PSNR, SSIM, ...: kontext_core.validate.metrics), grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kontext_core.config import Params
from kontext_core.model.source import model_inputs
from kontext_core.stages.engine import StageContext, StageSpec
from kontext_core.validate.metrics import metric_code

VALIDATE_DIR = "artifacts/validate"
VALIDATE_METRICS = "artifacts/metrics/validate.json"
# The eval loss at each fixed timestep (adapter and base): a curve, not columns of `dvc metrics show`.
TIMESTEP_PLOT = "artifacts/plots/eval_loss_by_timestep.csv"

VALIDATION_KEYS = [
    "validation_guidance",
    "validation_guidance_real",
    "validation_resolution",
    "validation_num_inference_steps",
    "validation_seed",
    "eval_timesteps",
    "flux_guidance_value",
    "conditioning_multidataset_sampling",
    "base_model_precision",
    "tokenizer_max_length",
]


def stage_validate(ctx: StageContext) -> None:
    """Score the base and the adapter on the eval pairs: eval loss, the image metrics, grids (kontext_core.validate)."""
    from kontext_core.data.sources import open_ref
    from kontext_core.model.base import frozen_base_transformer
    from kontext_core.model.load import training_device
    from kontext_core.tracking import runs
    from kontext_core.tracking.lineage import tag_stage_run
    from kontext_core.validate.validation import log_validation, run_validation

    p = ctx.params
    out = ctx.out(VALIDATE_DIR)

    def load(ref: str):
        return open_ref(ref, ctx.workdir)

    # Straight onto the accelerator, unless model offload keeps the transformer on the host between calls.
    device = None if p.offload_during_startup else training_device()
    transformer = frozen_base_transformer(p, ctx.workdir, ctx.input("quantize.model"), device)
    metrics = run_validation(
        p,
        ctx.workdir,
        transformer,
        ctx.input("train.adapter"),
        out,
        ctx.out(VALIDATE_METRICS),
        load,
        plot_file=ctx.out(TIMESTEP_PLOT),
    )
    run_id = runs.current_run_id(p, ctx.workdir, ctx.input("train.run"))
    log_validation(run_id, metrics, out / "grids")
    tag_stage_run(run_id, ctx.workdir, ctx.name, ctx.fingerprint)
    ctx.info.update({"run_id": run_id, **{k: v for k, v in metrics.items() if "_t0" not in k}})


def validate_inputs(params: Params, workdir: Path) -> dict[str, Any]:
    """The base model, and what each registered image metric computes: a new or changed metric (one
    registered outside kontext_core too) is scored again."""
    return {**model_inputs(params, workdir), "image_metrics": metric_code()}


SPEC = StageSpec(
    "validate",
    stage_validate,
    params_keys=VALIDATION_KEYS,
    # The eval loss reads the caches training reads (each pair's own crop plan and bucket).
    reads=[
        "train.adapter",
        "train.run",
        "quantize.model",
        "pair.pairs",
        "degrade.references",
        "fetch.digests",
        "cache_vae.index",
        "cache_vae.latents",
        "cache_text.index",
        "cache_text.embeds",
    ],
    outs=[VALIDATE_DIR],
    products={
        "metrics": VALIDATE_METRICS,
        "per_pair": f"{VALIDATE_DIR}/per_pair.json",
        "grids": f"{VALIDATE_DIR}/grids",
        "eval_set": f"{VALIDATE_DIR}/eval_set.json",
    },
    extra_inputs=validate_inputs,
    dvc_params=["revision"],
    metrics=[VALIDATE_METRICS],
    plots=[TIMESTEP_PLOT],
    # DVC takes one y column per output plot; the base model's column is in the file (and in `kontext plots`).
    plot_axes={TIMESTEP_PLOT: {"x": "timestep", "y": "eval_loss"}},
    accelerator=True,
    mlflow=True,
    artifacts="kontext_core.stages.views:validate_artifacts",
    summary="kontext_core.stages.views:validate_summary",
)
