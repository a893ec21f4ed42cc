"""train: the adapter trained on the cached latents and embeddings, saved in its release format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kontext_core.config import EMA_KEYS, TRAIN_VALIDATION_KEYS, Params
from kontext_core.fsutil import write_json, write_text
from kontext_core.model.adapter_kinds import kind_for, params_keys
from kontext_core.stages.engine import StageContext, StageSpec

ADAPTER_DIR = "models/adapter"
TRAIN_DIR = "artifacts/train"
TRAIN_RUN_FILE = f"{TRAIN_DIR}/mlflow_run.json"
TRAIN_METRICS = "artifacts/metrics/train.json"
LOSS_PLOT = "artifacts/plots/train_loss.csv"

# Every key that changes the trained adapter. Not here, on purpose: checkpoint_step_interval,
# checkpoints_total_limit, resume_from_checkpoint and the accelerate launcher settings (they change how
# a run is carried out, not its result), so resuming or checkpointing more often never retrains.
TRAIN_KEYS = [
    "lora_type",
    *params_keys(),
    "fuse_qkv_projections",
    "learning_rate",
    "optimizer",
    "lr_scheduler",
    "lr_warmup_steps",
    "lr_end",
    "lr_power",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "max_train_steps",
    "num_train_epochs",
    "train_batch_size",
    "seed",
    "loss_type",
    "huber_c",
    "flow_sigmoid_scale",
    "flow_schedule_shift",
    "flow_schedule_auto_shift",
    "flow_use_uniform_schedule",
    "flux_guidance_mode",
    "flux_guidance_value",
    "flux_guidance_min",
    "flux_guidance_max",
    "caption_dropout_probability",
    "mixed_precision",
    "gradient_checkpointing",
    "gradient_checkpointing_interval",
    "conditioning_multidataset_sampling",
    # The cached captions' length, and validation during training encodes its prompts the same way.
    "tokenizer_max_length",
    "accelerate.num_processes",
    *EMA_KEYS,
    # Validation during training logs images by step into the training run.
    *TRAIN_VALIDATION_KEYS,
]


def adapter_inputs(params: Params, workdir: Path) -> dict[str, Any]:
    """Files the run reads besides params: the adapter kind's (e.g. a LyCORIS config) and the
    validation prompt library."""
    from kontext_core.validate.prompts import prompt_inputs

    return {**kind_for(params).fingerprint_inputs(params, workdir), **prompt_inputs(params, workdir)}


def stage_train(ctx: StageContext) -> None:
    """Train the adapter on the cached latents and embeddings; save it in its release format. In process,
    or under `accelerate launch` (`accelerate.num_processes` > 1); checkpoints (models/checkpoints/) resume."""
    import tempfile

    import mlflow

    from kontext_core.tracking import runs
    from kontext_core.tracking.lineage import log_params, tag_stage_run
    from kontext_core.train.data import CachePaths, load_cached_data
    from kontext_core.train.loop import bucket_counts
    from kontext_core.train.run import TrainJob, launch, run_training

    p = ctx.params
    opened_by_flow = runs.RUN_ID_ENV in os.environ
    run_id = runs.current_run_id(p, ctx.workdir)
    if not opened_by_flow:  # the flow logs the params once when it opens its run
        log_params(mlflow.MlflowClient(), run_id, p)
    train_dir = ctx.out(TRAIN_DIR)
    cache_paths = CachePaths(
        pairs=ctx.input("pair.pairs"),
        vae_index=ctx.input("cache_vae.index"),
        latents=ctx.input("cache_vae.latents"),
        text_index=ctx.input("cache_text.index"),
        embeds=ctx.input("cache_text.embeds"),
    )
    # The job and result files hold paths and timings: kept out of the hashed outputs.
    with tempfile.TemporaryDirectory(prefix=".train-job-", dir=ctx.workdir / "artifacts") as tmp:
        job = TrainJob(
            params=p,
            workdir=str(ctx.workdir),
            fingerprint=ctx.fingerprint,
            adapter_dir=str(ctx.out(ADAPTER_DIR)),
            result_file=str(Path(tmp) / "result.json"),
            cache_paths=cache_paths.to_json(),
            quantized_dir=str(ctx.input("quantize.model")),
            run_id=run_id,
        )
        if p.accelerate.num_processes > 1:
            result = launch(job, Path(tmp) / "job.json", p, ctx.workdir)
        else:
            result = run_training(job)
    losses = result.losses
    data = load_cached_data(cache_paths)
    write_text(ctx.out(LOSS_PLOT), "step,loss\n" + "".join(f"{i},{v:.6f}\n" for i, v in enumerate(losses)))
    window = max(1, len(losses) // 5)
    metrics = {
        "loss_first": sum(losses[:window]) / window,
        "loss_last": sum(losses[-window:]) / window,
        "steps": len(losses),
        "train_pairs": len(data.samples),
    }
    write_json(ctx.out(TRAIN_METRICS), metrics)
    write_json(train_dir / "mlflow_run.json", {"run_id": run_id})
    tag_stage_run(run_id, ctx.workdir, ctx.name, ctx.fingerprint)
    ctx.info.update(
        {
            "run_id": run_id,
            "buckets": bucket_counts(data),
            "resumed_from": result.resumed_from,
            "train_seconds": round(result.seconds, 3),
            **metrics,
        }
    )


SPEC = StageSpec(
    "train",
    stage_train,
    params_keys=TRAIN_KEYS,
    reads=[
        "cache_vae.index",
        "cache_vae.latents",
        "cache_text.index",
        "cache_text.embeds",
        "quantize.model",
        "pair.pairs",
    ],
    outs=[ADAPTER_DIR, TRAIN_DIR],
    products={"adapter": ADAPTER_DIR, "run": TRAIN_RUN_FILE, "metrics": TRAIN_METRICS, "loss": LOSS_PLOT},
    extra_inputs=adapter_inputs,
    metrics=[TRAIN_METRICS],
    plots=[LOSS_PLOT],
    accelerator=True,
    mlflow=True,
    artifacts="kontext_core.stages.views:train_artifacts",
    summary="kontext_core.stages.views:train_summary",
)
