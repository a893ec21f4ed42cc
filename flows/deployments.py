"""Deployments: `kontext-train` with the schedule from params.yaml, and `kontext-reproduce` on demand."""

from __future__ import annotations

from pathlib import Path

from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment

from flows.reproduce_flow import kontext_reproduce
from flows.train_flow import kontext_train
from kontext_core.config import load_params


def build_deployment(params_file: Path) -> RunnerDeployment:
    """A served deployment: cron from `prefect.cron`, the params file as its default parameter."""
    params_file = Path(params_file).resolve()
    params = load_params(params_file)
    return kontext_train.to_deployment(
        name=params.prefect.deployment_name,
        schedule=CronSchedule(cron=params.prefect.cron, timezone=params.prefect.timezone),
        parameters={"params_file": str(params_file)},
        tags=["kontext"],
        description="Fine-tune a FLUX.1 Kontext LoRA and register it in MLflow.",
    )


REPRODUCE_DEPLOYMENT = "kontext-reproduce"


def build_reproduce_deployment(params_file: Path) -> RunnerDeployment:
    """No schedule: an auditor starts it from the UI with the model URI as its parameter."""
    params_file = Path(params_file).resolve()
    load_params(params_file)
    return kontext_reproduce.to_deployment(
        name=REPRODUCE_DEPLOYMENT,
        parameters={"params_file": str(params_file)},
        tags=["kontext", "audit"],
        description="Rebuild a registered adapter from its lineage: identical, different or cannot reproduce.",
    )
