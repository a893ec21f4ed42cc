"""register: the adapter logged as a pyfunc edit model, registered, the alias moved on a fair win."""

from __future__ import annotations

import os

from kontext_core.fsutil import write_json
from kontext_core.stages.engine import StageContext, StageSpec

REGISTER_DIR = "artifacts/register"


def stage_register(ctx: StageContext) -> None:
    """Log the adapter as a pyfunc edit model, register it, and move the champion alias only when it
    beats the champion scored on the same eval set (kontext_core.validate.promotion)."""
    from kontext_core.data.sources import open_ref
    from kontext_core.model.base import frozen_base_transformer
    from kontext_core.tracking import runs
    from kontext_core.tracking.lineage import tag_stage_run
    from kontext_core.validate.promotion import register_version

    p = ctx.params
    metrics = ctx.read_json("validate.metrics")
    run_id = runs.current_run_id(p, ctx.workdir, ctx.input("train.run"))
    registration = register_version(
        p,
        ctx.workdir,
        run_id,
        ctx.input("train.adapter"),
        ctx.input("validate.eval_set").parent,
        metrics,
        lambda: frozen_base_transformer(p, ctx.workdir, ctx.input("quantize.model")),
        lambda ref: open_ref(ref, ctx.workdir),
    )
    write_json(ctx.out(REGISTER_DIR) / "registration.json", registration.to_dict() | {"run_id": run_id})
    tag_stage_run(run_id, ctx.workdir, ctx.name, ctx.fingerprint)
    if not os.environ.get(runs.RUN_ID_ENV):
        # Run stage by stage (DVC): nothing else closes the run that train opened.
        runs.end_run(run_id, ctx.workdir, "FINISHED")
    ctx.info.update(registration.to_dict())


SPEC = StageSpec(
    "register",
    stage_register,
    params_keys=["registry", "mlflow.experiment_name"],
    # Re-scoring a champion on this eval set needs the base, the pairs and the caches validate read.
    reads=[
        "train.adapter",
        "train.run",
        "validate.metrics",
        "validate.eval_set",
        "quantize.model",
        "pair.pairs",
        "cache_vae.index",
        "cache_text.index",
    ],
    outs=[REGISTER_DIR],
    products={"registration": f"{REGISTER_DIR}/registration.json"},
    accelerator=True,
    mlflow=True,
    artifacts="kontext_core.stages.views:register_artifacts",
    summary="kontext_core.stages.views:register_summary",
)
