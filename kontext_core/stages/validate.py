"""validate: the eval pairs edited by the base and by the trained adapter; grids and metrics."""

from __future__ import annotations

from kontext_core.fsutil import write_json
from kontext_core.model.source import model_inputs
from kontext_core.stages.engine import StageContext, StageSpec

VALIDATE_DIR = "artifacts/validate"
VALIDATE_METRICS = "artifacts/metrics/validate.json"

VALIDATION_KEYS = [
    "validation_guidance",
    "validation_guidance_real",
    "validation_resolution",
    "validation_num_inference_steps",
    "validation_seed",
]


def stage_validate(ctx: StageContext) -> None:
    """Edit the eval pairs with the trained adapter (live, on the training-precision base)."""
    import mlflow

    from kontext_core.data.sources import open_ref
    from kontext_core.model.adapter_kinds import attach_saved_adapter
    from kontext_core.model.base import frozen_base_transformer
    from kontext_core.model.load import load_pipeline, place_pipeline, training_device
    from kontext_core.tracking import runs
    from kontext_core.tracking.lineage import tag_stage_run
    from kontext_core.validate.grids import make_grid
    from kontext_core.validate.run import evaluate, grid_name

    p = ctx.params
    pairs = ctx.read_json("pair.pairs")
    eval_pairs = [x for x in pairs if x["split"] == "eval"] or [x for x in pairs if x["split"] == "train"][:2]
    transformer = frozen_base_transformer(p, ctx.workdir, ctx.input("quantize.model"))
    pipe = place_pipeline(load_pipeline(p, ctx.workdir, transformer=transformer), p, training_device())
    def load(ref: str):
        return open_ref(ref, ctx.workdir)

    # One bar per pass over the eval pairs instead of the pipeline's own bar for every edit.
    pipe.set_progress_bar_config(disable=True)
    base_results = evaluate(pipe, eval_pairs, load, p, desc="validate base")
    attach_saved_adapter(pipe.transformer, ctx.input("train.adapter"), p)
    results = evaluate(pipe, eval_pairs, load, p, desc="validate lora")
    out = ctx.out(VALIDATE_DIR)
    grids = out / "grids"
    grids.mkdir(parents=True, exist_ok=True)
    for base, res in zip(base_results, results, strict=True):
        grid = make_grid(
            [("reference", res.reference), ("base", base.output), ("lora", res.output), ("target", res.target)]
        )
        grid.save(grids / grid_name(res.pair_id))
    metrics = {
        "psnr": sum(r.psnr for r in results) / len(results),
        "psnr_base": sum(r.psnr for r in base_results) / len(base_results),
        "eval_pairs": len(results),
    }
    write_json(ctx.out(VALIDATE_METRICS), metrics)
    write_json(out / "per_pair.json", [{"pair_id": r.pair_id, "caption": r.caption, "psnr": r.psnr} for r in results])
    run_id = runs.current_run_id(p, ctx.workdir, ctx.input("train.run"))
    client = mlflow.MlflowClient()
    client.log_metric(run_id, "val/psnr", metrics["psnr"])
    client.log_metric(run_id, "val/psnr_base", metrics["psnr_base"])
    client.log_artifacts(run_id, str(grids), artifact_path="validation/grids")
    tag_stage_run(run_id, ctx.workdir, ctx.name, ctx.fingerprint)
    ctx.info.update({"run_id": run_id, **metrics})


SPEC = StageSpec(
    "validate",
    stage_validate,
    params_keys=VALIDATION_KEYS,
    reads=["train.adapter", "train.run", "quantize.model", "pair.pairs", "degrade.references"],
    outs=[VALIDATE_DIR],
    products={
        "metrics": VALIDATE_METRICS,
        "per_pair": f"{VALIDATE_DIR}/per_pair.json",
        "grids": f"{VALIDATE_DIR}/grids",
    },
    extra_inputs=model_inputs,
    metrics=[VALIDATE_METRICS],
)
