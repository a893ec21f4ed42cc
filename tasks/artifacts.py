"""Prefect artifacts for what a stage produced: the pre-flight report, metrics, the model URI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from kontext_core.data.report import table_rows
from kontext_core.stages import STAGES


def _product(workdir: Path, product: str) -> Path:
    stage, _, name = product.partition(".")
    return workdir / STAGES[stage].products[name]


def publish_artifacts(name: str, workdir: Path, manifest: dict[str, Any]) -> None:
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
        info = manifest["info"]
        create_markdown_artifact(
            f"# Training\n\nsteps: {info['steps']}, pairs: {info['train_pairs']}\n\n"
            f"loss (first fifth): {info['loss_first']:.4f}\n\nloss (last fifth): {info['loss_last']:.4f}\n\n"
            f"MLflow run: `{info['run_id']}`\n",
            key="kontext-training",
        )
    elif name == "validate":
        per_pair = json.loads(_product(workdir, "validate.per_pair").read_text())
        create_table_artifact(
            per_pair,
            key="kontext-validation",
            description="eval loss (adapter and base), PSNR and SSIM against the edit targets",
        )
    elif name == "register":
        info = manifest["info"]
        champion = info.get("champion_version")
        create_markdown_artifact(
            f"# Registered\n\n`{info['model_uri']}`"
            + (f" is now `{info['alias_uri']}`" if info["became_champion"] else " (champion kept)")
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
