"""The `kontext-train` flow against a real (ephemeral) Prefect API and a temp MLflow store."""

from __future__ import annotations

import asyncio

import mlflow
import pytest
from prefect.client.orchestration import get_client

from flows.train_flow import kontext_train
from kontext_core.stages import STAGE_ORDER, STAGES
from tests.conftest import make_project, write_params

pytestmark = pytest.mark.slow


async def _task_runs(flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _task_runs_settled(flow_run_id, count: int) -> list:
    """Task runs reach the API through events; wait until all of them are there."""
    import asyncio
    import time

    deadline = time.time() + 30
    while True:
        runs = asyncio.run(_task_runs(flow_run_id))
        if (len(runs) >= count and all(tr.task_version for tr in runs)) or time.time() > deadline:
            return runs
        time.sleep(0.5)


def _flow_run_id(result) -> str:
    run = mlflow.get_run(result["mlflow_run_id"])
    return run.data.tags["prefect.flow_run_id"]


def test_flow_runs_caches_and_reruns_only_what_changed(tmp_path, mlflow_db, prefect_harness):
    params_file = make_project(tmp_path / "project", mlflow_db=mlflow_db)
    mlflow.set_tracking_uri(f"sqlite:///{mlflow_db}")

    first = kontext_train(params_file=str(params_file))
    assert first["stages"] == {name: "ran" for name in STAGE_ORDER}
    assert first["alias_uri"] == "models:/kontext-lora@champion"
    run = mlflow.get_run(first["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["git.commit"]
    assert run.data.tags["kontext.fingerprint.train"]
    assert run.data.tags["kontext.stages_run"] == ",".join(STAGE_ORDER)
    versions = {tr.name: tr.task_version for tr in _task_runs_settled(_flow_run_id(first), len(STAGE_ORDER))}
    assert versions == {name: STAGES[name].code_version() for name in STAGE_ORDER}

    runs_before = mlflow.search_runs(search_all_experiments=True)
    second = kontext_train(params_file=str(params_file))
    assert set(second["stages"].values()) == {"skipped"}
    # The engine skipped each stage (Prefect caches nothing): each task ran its up-to-date check.
    assert set(second["prefect_states"].values()) == {"Skipped"}
    # Nothing ran: no new (empty) MLflow run; the result names the run the outputs came from.
    assert len(mlflow.search_runs(search_all_experiments=True)) == len(runs_before)
    assert second["mlflow_run_reused"] and second["mlflow_run_id"] == first["mlflow_run_id"]

    write_params(params_file, learning_rate=0.002)
    third = kontext_train(params_file=str(params_file))
    ran = [name for name, state in third["stages"].items() if state == "ran"]
    assert ran == ["train", "validate", "register"]
    assert third["model_uri"] == "models:/kontext-lora/2"
    third_run = mlflow.get_run(third["mlflow_run_id"])
    assert third_run.data.params["learning_rate"] == "0.002"
    assert len(mlflow.MlflowClient().get_metric_history(third_run.info.run_id, "train/loss")) == 6
    assert "RUNNING" not in set(mlflow.search_runs(search_all_experiments=True)["status"])


def test_kontext_run_reports_a_config_error_in_one_line_without_retrying(tmp_path, mlflow_db, prefect_harness):
    import json

    from typer.testing import CliRunner

    from flows.cli import app

    params_file = make_project(tmp_path / "bad", mlflow_db=mlflow_db, shared_init=True)
    config_file = tmp_path / "bad/config/multidatabackend.json"
    config = json.loads(config_file.read_text())
    config[0]["resolution_typ"] = config[0].pop("resolution_type")
    config_file.write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["run", "--params", str(params_file)])
    assert result.exit_code == 2
    assert "unknown key 'resolution_typ'; did you mean 'resolution_type'" in result.output
    failed = asyncio.run(_latest_flow_run_id())
    task_runs = _task_runs_settled(failed, len(STAGE_ORDER))
    # A task run that never started keeps Prefect's generated name (`train-944`): the stage is before the `-`.
    states = {tr.name.split("-")[0]: tr.state.name for tr in task_runs}
    # init was up to date (shared_init); fetch failed at its fingerprint, once (no retry); nothing that
    # reads its outputs started.
    assert states["init"] == "Skipped" and states["fetch"] == "Failed", states
    assert all(tr.run_count <= 1 for tr in task_runs)
    downstream = {name for name in STAGE_ORDER if "fetch" in _upstream_closure(name)}
    assert {states[name] for name in downstream} == {"NotReady"}, states


def _upstream_closure(name: str) -> set[str]:
    found: set[str] = set()
    for up in STAGES[name].upstream:
        found |= {up, *_upstream_closure(up)}
    return found


async def _latest_flow_run_id():
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
    return runs[0].id
