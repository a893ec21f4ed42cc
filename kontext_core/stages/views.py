"""What the built-in stages show a reviewer: their reports (Prefect artifacts, published by tasks/) and
their lines in the run's closing summary. Each stage's spec names its functions here by reference
("kontext_core.stages.views:train_artifacts"), so rewording a report changes no stage's code version.

Metrics come from the metric registry (kontext_core.validate.metrics): a registered metric gets its
columns in the validation reports without a change here.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from kontext_core.stages.engine import Artifact, StageReport
from kontext_core.validate.metrics import METRICS

# Grids up to this size are shown inline in the validation artifact; larger ones are linked.
INLINE_GRID_BYTES = 200_000


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _number(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------------- pair


def pair_artifacts(report: StageReport) -> list[Artifact]:
    from kontext_core.data.report import table_rows

    report_json = json.loads(report.product("report").read_text())
    return [
        Artifact(
            "markdown", "kontext-preflight-report", report.product("report_md").read_text(), "pairing pre-flight report"
        ),
        Artifact(
            "table",
            "kontext-preflight-table",
            table_rows(report_json),
            "pairing pre-flight report, one row per dataset",
        ),
    ]


# --------------------------------------------------------------------------------------------- train


def train_artifacts(report: StageReport) -> list[Artifact]:
    info = report.info
    return [
        Artifact(
            "markdown",
            "kontext-training",
            f"# Training\n\nsteps: {info['steps']}, pairs: {info['train_pairs']}\n\n"
            f"loss (first fifth): {info['loss_first']:.4f}\n\nloss (last fifth): {info['loss_last']:.4f}\n\n"
            f"MLflow run: `{info['run_id']}`\n",
        )
    ]


def train_summary(manifest: dict[str, Any], metric: str) -> list[str]:
    info = manifest.get("info") or {}
    return [f"final loss: {_number(info.get('loss_last'))} (mean of the last fifth of {info.get('steps')} steps)"]


# ------------------------------------------------------------------------------------------ validate


def validation_rows(per_pair: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per eval pair: each metric for the base model and for the LoRA side by side."""
    rows = []
    for row in per_pair:
        out = {"pair": row["pair_id"], "caption": row.get("caption", "")}
        for name in METRICS:
            out[f"{name} base"] = row.get(f"{name}_base")
            out[f"{name} lora"] = row.get(name)
        rows.append(out)
    return rows


def validation_markdown(per_pair: list[dict[str, Any]], grids: Path, run_url: str | None) -> str:
    """The scores as a table whose grid column is a short label; the grids themselves follow the table,
    one per paragraph, where the UI scales them to its width (inside a table cell a 4-panel grid is as
    wide as its pixels and the columns are cut off on any screen narrower than that)."""
    from kontext_core.validate.run import grid_name

    names = list(METRICS)
    headings = [f"{METRICS[name].heading} {side}" for name in names for side in ("base", "lora")]
    lines = [
        "# Validation: base model vs LoRA",
        "",
        "Grids: reference | base | lora | target, below the table."
        + (f" All grids in the [MLflow run]({run_url}) under validation/grids." if run_url else ""),
        "",
        "| " + " | ".join(["pair", *headings, "grid"]) + " |",
        "|" + "---|" * (len(headings) + 2),
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
        cells = [row["pair_id"]] + [_fmt(row.get(f"{name}{side}")) for name in names for side in ("_base", "")]
        lines.append("| " + " | ".join([*cells, label]) + " |")
    if images:
        lines += ["", *images]
    return "\n".join(lines).rstrip("\n") + "\n"


def validate_artifacts(report: StageReport) -> list[Artifact]:
    from kontext_core.tracking.links import safe_run_link

    per_pair = json.loads(report.product("per_pair").read_text())
    scored = ", ".join(m.heading for m in METRICS.values())
    return [
        Artifact(
            "table",
            "kontext-validation",
            validation_rows(per_pair),
            f"per eval pair: {scored} of the base model and of the LoRA",
        ),
        Artifact(
            "markdown",
            "kontext-validation-grids",
            validation_markdown(per_pair, report.product("grids"), safe_run_link(report.info.get("run_id"))),
            "validation grids (reference | base | lora | target) with the scores",
        ),
    ]


def validate_summary(manifest: dict[str, Any], metric: str) -> list[str]:
    info = manifest.get("info") or {}
    lines = [
        f"validation {metric}: {_number(info.get(metric))} "
        f"(base model without the adapter: {_number(info.get(f'{metric}_base'))})"
    ]
    # What the grids show, whatever the registry ranks by: PSNR of the edits against the targets.
    if metric != "psnr" and info.get("psnr") is not None:
        lines.append(
            f"validation psnr: lora {_number(info.get('psnr'), 2)} dB, "
            f"base {_number(info.get('psnr_base'), 2)} dB (edits against the targets)"
        )
    return lines


# ------------------------------------------------------------------------------------------ register


def register_artifacts(report: StageReport) -> list[Artifact]:
    from kontext_core.tracking.links import version_link

    info = report.info
    champion = info.get("champion_version")
    if info.get("awaiting_approval"):
        state = " awaits approval (see the paused flow run)"
    elif info["became_champion"]:
        state = f" is now `{info['alias_uri']}`"
    else:
        state = " (champion kept)"
    text = (
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
        + f"\neval set fingerprint: `{info.get('eval_fingerprint', '')}`\n"
    )
    return [
        Artifact("markdown", "kontext-registered-model", text),
        Artifact(
            "link",
            "kontext-mlflow-model-version",
            version_link(info["model_name"], str(info["version"])),
            "the registered model version",
            link_text=f"{info['model_uri']} in the MLflow registry",
        ),
    ]


def register_summary(manifest: dict[str, Any], metric: str) -> list[str]:
    info = manifest.get("info") or {}
    previous = info.get("champion_metric")
    # A skipped register stage reports the decision its last run made.
    earlier = " (decided by an earlier run)" if manifest.get("skipped") else ""
    if info.get("became_champion"):
        against = "no champion before" if previous is None else f"previous champion {_number(previous)}"
        return [f"champion: {info.get('model_uri')} is the new champion ({against}){earlier}"]
    if info.get("became_champion") is False:
        return [
            f"champion: unchanged; {info.get('model_uri')} did not beat the champion's "
            f"{metric} {_number(previous)}{earlier}"
        ]
    return []
