"""Deployments: `kontext-train` (cron from params.yaml, and a trigger on data changes), the data watch,
and `kontext-reproduce` on demand. `infra/prefect.yaml` declares the same for work pools."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from flows.data_watch import DATA_CHANGED_EVENT, kontext_data_watch, project_resource_id
from flows.reproduce_flow import kontext_reproduce
from flows.train_flow import kontext_train
from kontext_core.config import Params, load_params


def served_path(params_file: Path) -> str:
    """The params file as a served deployment's default: relative to the folder `kontext serve` runs in
    (where its runs run), never an absolute path of the machine that deployed it."""
    return Path(os.path.relpath(Path(params_file).resolve(), Path.cwd().resolve())).as_posix()


# A worker's flow run starts in a temporary folder; this pull step moves it into the checkout.
PROJECT_DIR_ENV = "KONTEXT_PROJECT_DIR"


def enter_checkout(directory: str | None = None) -> dict[str, str]:
    """Pull step of infra/prefect.yaml: change into the checkout that the worker's environment runs from
    (`KONTEXT_PROJECT_DIR`, else the folder holding this installed `flows` package), so the
    deployments work on any process worker started from a checkout, with no path written in them."""
    target = Path(directory or os.environ.get(PROJECT_DIR_ENV) or Path(__file__).resolve().parents[1])
    if not (target / "flows").is_dir():
        raise FileNotFoundError(f"{PROJECT_DIR_ENV}={target}: not a kontext-pipeline checkout (no flows/ folder)")
    os.chdir(target)
    return {"directory": str(target)}


def data_trigger(params: Params, parameters: dict[str, Any] | None = None) -> DeploymentEventTrigger:
    """Run training when the data watch reports a change in this project (its params file and folder
    come from the event, unless given)."""
    return DeploymentEventTrigger(
        name="train when the data changes",
        expect={DATA_CHANGED_EVENT},
        match={"prefect.resource.id": project_resource_id(params)},
        parameters=parameters
        or {"params_file": "{{ event.payload.params_file }}", "workdir": "{{ event.payload.workdir }}"},
    )


def build_deployment(params_file: Path) -> RunnerDeployment:
    """A served deployment: cron from `prefect.cron`, the trigger on data changes, the params file as
    its default parameter; the run settings of the form are its other parameters."""
    params_file = Path(params_file).resolve()
    params = load_params(params_file)
    return kontext_train.to_deployment(
        name=params.prefect.deployment_name,
        schedule=CronSchedule(cron=params.prefect.cron, timezone=params.prefect.timezone),
        parameters={"params_file": served_path(params_file)},
        triggers=[data_trigger(params)],
        # One run at a time: runs of one project share its outputs; further runs wait in the queue.
        concurrency_limit=1,
        tags=["kontext"],
        description="Fine-tune a FLUX.1 Kontext LoRA and register it in MLflow.",
    )


WATCH_DEPLOYMENT = "kontext-data-watch"


def build_watch_deployment(params_file: Path) -> RunnerDeployment:
    """The data watch every `prefect.watch_interval_seconds` (0: only when started by hand)."""
    params_file = Path(params_file).resolve()
    params = load_params(params_file)
    interval = params.prefect.watch_interval_seconds
    return kontext_data_watch.to_deployment(
        name=WATCH_DEPLOYMENT,
        schedule=IntervalSchedule(interval=interval) if interval else None,
        parameters={"params_file": served_path(params_file)},
        tags=["kontext"],
        description="Emit kontext.data.changed when the project's datasets change (it starts training).",
    )


REPRODUCE_DEPLOYMENT = "kontext-reproduce"


def build_reproduce_deployment(params_file: Path) -> RunnerDeployment:
    """No schedule: an auditor starts it from the UI with the model URI as its parameter."""
    params_file = Path(params_file).resolve()
    load_params(params_file)
    return kontext_reproduce.to_deployment(
        name=REPRODUCE_DEPLOYMENT,
        parameters={"params_file": served_path(params_file)},
        tags=["kontext", "audit"],
        description="Rebuild a registered adapter from its lineage: identical, different or cannot reproduce.",
    )
