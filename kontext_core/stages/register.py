"""register: the adapter logged with the mlflow.diffusers flavour, registered, the alias moved."""

from __future__ import annotations

import os

from kontext_core.config import ConfigError
from kontext_core.fsutil import write_json
from kontext_core.stages.engine import StageContext, StageSpec

REGISTER_DIR = "artifacts/register"


def stage_register(ctx: StageContext) -> None:
    """Log the adapter with the mlflow.diffusers flavour, register it, move the champion alias."""
    from kontext_core.model.source import resolve_model_source
    from kontext_core.tracking import runs
    from kontext_core.tracking.lineage import tag_stage_run
    from kontext_core.tracking.registry import register_adapter

    p = ctx.params
    metrics = ctx.read_json("validate.metrics")
    if p.registry.metric not in metrics:
        raise ConfigError(
            f"registry.metric = {p.registry.metric!r}: not a validation metric; allowed: {', '.join(sorted(metrics))}"
        )
    run_id = runs.current_run_id(p, ctx.workdir, ctx.input("train.run"))
    registration = register_adapter(
        p, run_id, ctx.input("train.adapter"), resolve_model_source(p, ctx.workdir), metrics[p.registry.metric]
    )
    write_json(ctx.out(REGISTER_DIR) / "registration.json", registration.__dict__ | {"run_id": run_id})
    tag_stage_run(run_id, ctx.workdir, ctx.name, ctx.fingerprint)
    if not os.environ.get(runs.RUN_ID_ENV):
        # Run stage by stage (DVC): nothing else closes the run that train opened.
        import mlflow

        mlflow.MlflowClient().set_terminated(run_id, status="FINISHED")
    ctx.info.update(registration.__dict__)


SPEC = StageSpec(
    "register",
    stage_register,
    params_keys=["registry", "mlflow.experiment_name"],
    reads=["train.adapter", "train.run", "validate.metrics"],
    outs=[REGISTER_DIR],
    products={"registration": f"{REGISTER_DIR}/registration.json"},
)
