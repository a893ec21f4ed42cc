"""Prefect artifacts a reviewer reads: the pre-flight report, training, validation (base vs LoRA per
pair, with the grids), links to the MLflow run and the registered version, one summary per run."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import mlflow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from kontext_core.config import Params
from kontext_core.data.report import table_rows
from kontext_core.stages import STAGES
from kontext_core.validate.run import grid_name

# Where links to a file or SQLite store point: the MLflow UI that `make ui-mlflow` serves.
MLFLOW_UI_ENV = "KONTEXT_MLFLOW_UI_URL"
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"
# Grids up to this size are shown inline in the validation artifact; larger ones are linked.
INLINE_GRID_BYTES = 200_000


def _product(workdir: Path, product: str) -> Path:
    stage, _, name = product.partition(".")
    return workdir / STAGES[stage].products[name]


def mlflow_ui_url() -> str:
    """The MLflow UI for links: the tracking server itself when it is one, else KONTEXT_MLFLOW_UI_URL."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return os.environ.get(MLFLOW_UI_ENV, DEFAULT_MLFLOW_UI).rstrip("/")


def run_link(run_id: str) -> str:
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    return f"{mlflow_ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"


def version_link(model_name: str, version: str) -> str:
    return f"{mlflow_ui_url()}/#/models/{model_name}/versions/{version}"


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def validation_rows(per_pair: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per eval pair: each metric for the base model and for the LoRA side by side."""
    rows = []
    for row in per_pair:
        out = {"pair": row["pair_id"], "caption": row.get("caption", "")}
        for metric in ("eval_loss", "psnr", "ssim"):
            out[f"{metric} base"] = row.get(f"{metric}_base")
            out[f"{metric} lora"] = row.get(metric)
        rows.append(out)
    return rows


def validation_markdown(per_pair: list[dict[str, Any]], grids: Path, run_url: str | None) -> str:
    """The scores as a table whose grid column is a short label; the grids themselves follow the table,
    one per paragraph, where the UI scales them to its width (inside a table cell a 4-panel grid is as
    wide as its pixels and the columns are cut off on any screen narrower than that)."""
    lines = [
        "# Validation: base model vs LoRA",
        "",
        "Grids: reference | base | lora | target, below the table."
        + (f" All grids in the [MLflow run]({run_url}) under validation/grids." if run_url else ""),
        "",
        "| pair | eval loss base | eval loss lora | PSNR base | PSNR lora | SSIM base | SSIM lora | grid |",
        "|---|---|---|---|---|---|---|---|",
    ]
    images = []
    for number, row in enumerate(per_pair, start=1):
        grid = grids / grid_name(row["pair_id"])
        if grid.exists() and grid.stat().st_size <= INLINE_GRID_BYTES:
            label = f"grid {number} (below)"
            encoded = base64.b64encode(grid.read_bytes()).decode()
            image = f"![grid {number}](data:image/png;base64,{encoded})"
            images += [f"**grid {number}**: {row['pair_id']}", "", image, ""]
        elif run_url:
            label = f"[{grid.name}]({run_url})"
        else:
            label = grid.name
        cells = [row["pair_id"]] + [
            _fmt(row.get(f"{metric}{side}")) for metric in ("eval_loss", "psnr", "ssim") for side in ("_base", "")
        ]
        lines.append("| " + " | ".join([*cells, label]) + " |")
    if images:
        lines += ["", *images]
    return "\n".join(lines).rstrip("\n") + "\n"


def safe_run_link(run_id: str | None) -> str | None:
    if not run_id:
        return None
    try:
        return run_link(run_id)
    except Exception:  # a run in another store: no link rather than a failed stage
        return None


def publish_artifacts(name: str, workdir: Path, manifest: dict[str, Any], params: Params | None = None) -> None:
    """The artifacts of a stage that really ran (a skipped stage published its own when it ran)."""
    info = manifest["info"]
    if name == "pair":
        report = _product(workdir, "pair.report_md")
        create_markdown_artifact(
            report.read_text(), key="kontext-preflight-report", description="pairing pre-flight report"
        )
        report_json = json.loads(_product(workdir, "pair.report").read_text())
        create_table_artifact(
            table_rows(report_json),
            key="kontext-preflight-table",
            description="pairing pre-flight report, one row per dataset",
        )
    elif name == "train":
        create_markdown_artifact(
            f"# Training\n\nsteps: {info['steps']}, pairs: {info['train_pairs']}\n\n"
            f"loss (first fifth): {info['loss_first']:.4f}\n\nloss (last fifth): {info['loss_last']:.4f}\n\n"
            f"MLflow run: `{info['run_id']}`\n",
            key="kontext-training",
        )
    elif name == "validate":
        per_pair = json.loads(_product(workdir, "validate.per_pair").read_text())
        create_table_artifact(
            validation_rows(per_pair),
            key="kontext-validation",
            description="per eval pair: eval loss, PSNR and SSIM of the base model and of the LoRA",
        )
        create_markdown_artifact(
            validation_markdown(per_pair, _product(workdir, "validate.grids"), safe_run_link(info.get("run_id"))),
            key="kontext-validation-grids",
            description="validation grids (reference | base | lora | target) with the scores",
        )
    elif name == "register":
        champion = info.get("champion_version")
        if info.get("awaiting_approval"):
            state = " awaits approval (see the paused flow run)"
        elif info["became_champion"]:
            state = f" is now `{info['alias_uri']}`"
        else:
            state = " (champion kept)"
        create_markdown_artifact(
            f"# Registered\n\n`{info['model_uri']}`"
            + state
            + f"\n\n**Decision:** {info.get('decision', '')}: {info.get('reason', '')}\n\n"
            + f"| | version | {info.get('metric', '')} |\n|---|---|---|\n"
            + f"| challenger | {info['version']} | {info.get('challenger_score')} |\n"
            + (
                f"| champion | {champion} | {info.get('champion_metric')}"
                + (" (re-scored on this eval set)" if info.get("champion_rescored") else "")
                + " |\n"
                if champion
                else ""
            )
            + f"\neval set fingerprint: `{info.get('eval_fingerprint', '')}`\n",
            key="kontext-registered-model",
        )
        create_link_artifact(
            version_link(info["model_name"], str(info["version"])),
            link_text=f"{info['model_uri']} in the MLflow registry",
            key="kontext-mlflow-model-version",
            description="the registered model version",
        )
