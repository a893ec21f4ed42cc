"""The validate stage's work: score the base and the adapter on the eval set, write grids and metrics.

Outputs: `metrics_file` (flat numbers, also DVC metrics), `out_dir/per_pair.json`, `out_dir/grids/`,
and `out_dir/eval_set.json`: the eval set's description and fingerprint, which registration uses
to decide whether the champion's stored score came from the same exam.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from kontext_core.config import Params
from kontext_core.fsutil import write_json
from kontext_core.validate.eval_loss import EvalSet, load_eval_set
from kontext_core.validate.grids import make_grid
from kontext_core.validate.metrics import metric_code
from kontext_core.validate.run import grid_name
from kontext_core.validate.score import Scores, attach, score

EVAL_SET_FILE = "eval_set.json"


def eval_pairs(workdir: Path) -> list[dict]:
    """The held-out pairs (`eval_dataset_id`), or the first two train pairs when none is held out."""
    pairs = json.loads((Path(workdir) / "data/pair/pairs.json").read_text())
    return [x for x in pairs if x["split"] == "eval"] or [x for x in pairs if x["split"] == "train"][:2]


def eval_fingerprint(params: Params, eval_set: EvalSet) -> str:
    """The exam: eval items and loss settings, plus what the image metrics depend on."""
    return eval_set.fingerprint(
        {
            "base_model_precision": params.base_model_precision,
            "validation_guidance": params.validation_guidance,
            "validation_guidance_real": params.validation_guidance_real,
            "validation_num_inference_steps": params.validation_num_inference_steps,
            "conditioning_multidataset_sampling": params.conditioning_multidataset_sampling,
            "image_metrics": metric_code(),
        }
    )


def build_pipeline(params: Params, workdir: Path, transformer: torch.nn.Module):
    from kontext_core.model.load import load_pipeline, place_pipeline, training_device

    pipe = place_pipeline(load_pipeline(params, workdir, transformer=transformer), params, training_device())
    # One progress display per pass over the eval pairs (validate.run.evaluate), not diffusers' bar per edit.
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_validation(
    params: Params,
    workdir: Path,
    transformer: torch.nn.Module,
    adapter_dir: Path,
    out_dir: Path,
    metrics_file: Path,
    load: Callable[[str], Image.Image],
    plot_file: Path | None = None,
) -> dict[str, Any]:
    """Score base and adapter; `metrics_file` gets the scalars a user compares, `plot_file` the eval loss
    by timestep (CSV). Returns every number (the per-timestep ones too: MLflow draws them as curves)."""
    from kontext_core.model.load import training_device

    pairs = eval_pairs(workdir)
    eval_set = load_eval_set(workdir, params, pairs)
    pipe = build_pipeline(params, workdir, transformer)
    device = training_device()
    base = score(pipe, eval_set, pairs, load, params, device, desc="validate base")
    attach(pipe, adapter_dir, params)
    adapter = score(pipe, eval_set, pairs, load, params, device, desc="validate lora")
    write_grids(out_dir / "grids", base, adapter)
    fingerprint = eval_fingerprint(params, eval_set)
    metrics: dict[str, Any] = {**adapter.metrics(), **base.metrics("_base"), "eval_pairs": len(pairs)}
    scalars, by_timestep = split_timesteps(metrics)
    write_json(metrics_file, scalars)
    if plot_file is not None:
        write_timestep_plot(plot_file, by_timestep)
    write_json(out_dir / EVAL_SET_FILE, {"fingerprint": fingerprint, **eval_set.describe()})
    write_json(
        out_dir / "per_pair.json",
        [
            {
                "pair_id": r.pair_id,
                "caption": r.caption,
                "eval_loss": adapter.eval_loss.per_pair.get(r.pair_id),
                "eval_loss_base": base.eval_loss.per_pair.get(r.pair_id),
                **r.scores,
                **{f"{name}_base": value for name, value in b.scores.items()},
            }
            for b, r in zip(base.images, adapter.images, strict=True)
        ],
    )
    return {**metrics, "eval_fingerprint": fingerprint}


def timestep_key(key: str) -> tuple[str, int] | None:
    """(`eval_loss` or `eval_loss_base`, timestep x 1000) of a per-timestep key (`eval_loss_t0125`), else None."""
    head, _, tail = key.rpartition("_t")
    return (head, int(tail)) if head.startswith("eval_loss") and tail.isdigit() else None


def split_timesteps(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[int, dict[str, float]]]:
    """(the scalars, {timestep: {"eval_loss": ..., "eval_loss_base": ...}})."""
    scalars: dict[str, Any] = {}
    rows: dict[int, dict[str, float]] = {}
    for key, value in metrics.items():
        found = timestep_key(key)
        if found is None:
            scalars[key] = value
        else:
            rows.setdefault(found[1], {})[found[0]] = float(value)
    return scalars, rows


def write_timestep_plot(path: Path, rows: dict[int, dict[str, float]]) -> None:
    from kontext_core.fsutil import write_text

    columns = sorted({name for row in rows.values() for name in row})
    lines = [",".join(["timestep", *columns])]
    lines += [",".join([str(t), *(repr(rows[t].get(c, "")) for c in columns)]) for t in sorted(rows)]
    write_text(path, "\n".join(lines) + "\n")


def write_grids(grids: Path, base: Scores, adapter: Scores) -> None:
    grids.mkdir(parents=True, exist_ok=True)
    for b, res in zip(base.images, adapter.images, strict=True):
        grid = make_grid(
            [("reference", res.reference), ("base", b.output), ("lora", res.output), ("target", res.target)]
        )
        grid.save(grids / grid_name(res.pair_id))


def log_validation(run_id: str, metrics: dict[str, Any], grids: Path) -> None:
    """Metrics under `val/`, the loss by timestep as a curve (step = sigma x 1000), the grids."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    batch = []
    for key, value in metrics.items():
        if not isinstance(value, int | float):
            continue
        found = timestep_key(key)
        if found is not None:
            batch.append(Metric(f"val/{found[0]}_by_timestep", float(value), now, found[1]))
        else:
            batch.append(Metric(f"val/{key}", float(value), now, 0))
    client.log_batch(run_id, metrics=batch)
    client.set_tag(run_id, "kontext.eval_fingerprint", metrics["eval_fingerprint"])
    client.log_artifacts(run_id, str(grids), artifact_path="validation/grids")
