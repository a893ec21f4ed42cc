"""The Prefect UI as the control panel, against a real `prefect server start` and real process workers.

One project is built once (a direct flow call against the server); the other tests start runs the
way the UI does (deployments with parameters, events, a paused run's form) and read the results back
through the API: the graph's edges, the run log, the artifacts, the MLflow records.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import shutil
import threading
import time
from pathlib import Path
from uuid import UUID

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentTaskRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run

from flows.train_flow import kontext_train, stage_dependencies
from kontext_core.config import ConfigError
from kontext_core.stages import STAGE_ORDER
from kontext_core.stages.engine import read_manifest
from tests.conftest import make_project, write_params

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]

RUN_TIMEOUT = 600


def _api(coro_fn, *args, **kwargs):
    async def call():
        async with get_client() as client:
            return await coro_fn(client, *args, **kwargs)

    return asyncio.run(call())


async def _read_flow_run(client, flow_run_id):
    return await client.read_flow_run(flow_run_id)


async def _task_runs(client, flow_run_id):
    return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


async def _logs(client, flow_run_id):
    return await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


async def _artifacts(client, flow_run_id):
    return await client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )


async def _flow_runs_of(client, deployment_name):
    return await client.read_flow_runs(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name]))
    )


def wait_for_state(flow_run_id, done, timeout: float = RUN_TIMEOUT, what: str = "final"):
    """Poll a flow run until `done(state)` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        run = _api(_read_flow_run, flow_run_id)
        if run.state is not None and done(run.state):
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"flow run {flow_run_id} not {what} after {timeout}s (state {run.state and run.state.name})"
            )
        time.sleep(1)


def wait_final(flow_run_id, timeout: float = RUN_TIMEOUT):
    return wait_for_state(flow_run_id, lambda s: s.is_final(), timeout)


def settled(read, flow_run_id, ready, timeout: float = 60):
    """Task runs, logs and artifacts reach the API asynchronously: read until `ready` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        found = _api(read, flow_run_id)
        if ready(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def ran(task_runs) -> set[str]:
    """The stages that ran: the engine decides (Prefect caches nothing), and a task whose stage was up to
    date ends in a Completed state named Skipped."""
    assert {tr.state.name for tr in task_runs} <= {"Completed", "Skipped"}, [tr.state for tr in task_runs]
    return {tr.name for tr in task_runs if tr.state.name == "Completed"}


def flow_run_of(result) -> UUID:
    return UUID(mlflow.get_run(result["mlflow_run_id"]).data.tags["prefect.flow_run_id"])


@pytest.fixture(scope="module")
def project(prefect_server, tmp_path_factory, mlflow_template):
    """A project on which the whole flow ran once, against the real server (direct call)."""
    import shutil

    root = tmp_path_factory.mktemp("control-panel")
    db = root / "mlflow.db"
    shutil.copy(mlflow_template, db)
    params_file = make_project(root, mlflow_db=db)
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    result = kontext_train(params_file=str(params_file))
    assert result["stages"] == {name: "ran" for name in STAGE_ORDER}
    return {"params_file": params_file, "root": root, "db": db, "first": result, "flow_run_id": flow_run_of(result)}


def test_graph_has_the_ten_stages_with_their_edges(project):
    task_runs = settled(_task_runs, project["flow_run_id"], lambda trs: len(trs) >= len(STAGE_ORDER))
    by_id = {tr.id: tr for tr in task_runs}
    assert sorted(tr.name for tr in task_runs) == sorted(STAGE_ORDER)
    assert len({tr.task_key for tr in task_runs}) == len(STAGE_ORDER)
    for tr in task_runs:
        parents = {by_id[ref.id].name for ref in tr.task_inputs.get("upstream", []) if ref.id in by_id}
        assert parents == set(stage_dependencies(tr.name)), tr.name
    edges = {(p, tr.name) for tr in task_runs for p in stage_dependencies(tr.name)}
    assert {("pair", "cache_text"), ("degrade", "cache_vae"), ("init", "quantize"), ("quantize", "train")} <= edges
    # The independent stages overlap in time (they are submitted together once their inputs exist).
    spans = {tr.name: (tr.start_time, tr.end_time) for tr in task_runs}
    assert spans["cache_text"][0] < spans["cache_vae"][1] and spans["quantize"][0] < spans["cache_text"][1]


def test_run_log_holds_stage_summaries_progress_and_the_decision(project):
    logs = settled(_logs, project["flow_run_id"], lambda ls: any("registered models:/" in lg.message for lg in ls))
    messages = [lg.message for lg in logs]
    for name in STAGE_ORDER:
        assert any(m.startswith(f"stage {name}: ran") and "fingerprint" in m for m in messages), name
    assert any(m.startswith("stage pair: ran") and "pairs={train=" in m for m in messages)
    # The library's own loggers reach the run log, training progress as lines among them; the UI shows
    # each line's logger beside it, so the message does not repeat it.
    named = [(lg.name, lg.message) for lg in logs]
    assert ("kontext_core.stages.engine", "stage train: running") in {(n, m[:20]) for n, m in named}
    assert any(n == "kontext_core.progress" and m.startswith("train") and "%" in m for n, m in named)
    assert any(n == "kontext_core.tracking.registry" and "@champion" in m for n, m in named)
    assert not [m for n, m in named if n.startswith("kontext_core") and m.startswith(f"{n}: ")]


def test_artifacts_a_reviewer_reads(project):
    wanted = {
        "kontext-preflight-report",
        "kontext-validation",
        "kontext-validation-grids",
        "kontext-registered-model",
        "kontext-mlflow-model-version",
        "kontext-mlflow-run",
        "kontext-run-summary",
        "kontext-run-settings",
    }
    artifacts = settled(_artifacts, project["flow_run_id"], lambda arts: wanted <= {a.key for a in arts})
    by_key = {a.key: a for a in artifacts}
    assert wanted <= set(by_key)
    table = (
        json.loads(by_key["kontext-validation"].data)
        if isinstance(by_key["kontext-validation"].data, str)
        else by_key["kontext-validation"].data
    )
    assert {"eval_loss base", "eval_loss lora", "psnr base", "psnr lora"} <= set(table[0])
    assert "data:image/png;base64," in by_key["kontext-validation-grids"].data
    run_id = project["first"]["mlflow_run_id"]
    # Prefect keeps a link artifact as the markdown link it renders.
    assert f"/runs/{run_id})" in by_key["kontext-mlflow-run"].data
    assert "/#/models/kontext-lora/versions/1)" in by_key["kontext-mlflow-model-version"].data
    assert "| learning_rate |" in by_key["kontext-run-summary"].data


def test_a_bad_override_fails_before_any_stage(project):
    from prefect.exceptions import ParameterTypeError

    # lora_type is a choice in the form: Prefect refuses another value before the flow starts.
    with pytest.raises(ParameterTypeError, match="lora_type"):
        kontext_train(params_file=str(project["params_file"]), settings={"lora_type": "loha-ish"})
    with pytest.raises(ConfigError, match=r"^run override seed = -1: Input should be greater than or equal to 0$"):
        from kontext_core.config.overrides import check_overrides

        check_overrides({"seed": -1})


def test_ui_run_with_learning_rate_reruns_only_train_validate_register(project, workers):
    params_file = project["params_file"]
    flow_run = run_deployment(
        "kontext-train/kontext-train-scheduled",
        parameters={"params_file": str(params_file), "settings": {"learning_rate": 0.002}},
        timeout=0,
    )
    done = wait_final(flow_run.id)
    assert done.state.is_completed(), done.state.message
    assert done.work_pool_name == "kontext-gpu"
    task_runs = settled(_task_runs, done.id, lambda trs: len(trs) >= len(STAGE_ORDER))
    assert {tr.name for tr in task_runs} == set(STAGE_ORDER)
    assert ran(task_runs) == {"train", "validate", "register"}
    train_manifest = read_manifest(params_file.parent, "train")
    assert train_manifest["params"]["learning_rate"] == 0.002
    mlflow.set_tracking_uri(f"sqlite:///{project['db']}")
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`prefect.flow_run_id` = '{done.id}'")
    assert len(runs) == 1
    assert runs.iloc[0]["params.learning_rate"] == "0.002"
    assert json.loads(runs.iloc[0]["tags.kontext.overrides"]) == {"learning_rate": 0.002}


async def _paused_runs(client):
    from prefect.client.schemas.filters import FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    return await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    )


def _paused_answer(project, model_name: str, answer: dict) -> tuple:
    """A run (in a thread of this process: no worker start-up) pauses; the answer comes through the API
    as the UI's Resume form sends it."""
    write_params(
        project["params_file"],
        registry={"model_name": model_name, "require_approval": True, "approval_timeout_seconds": 300},
    )
    result: dict = {}
    # The thread runs in a copy of this context: Prefect's settings (PREFECT_API_URL of the server under
    # test) live in a context variable, and a bare thread would fall back to another session's API.
    context = contextvars.copy_context()
    runner = threading.Thread(
        target=lambda: result.update(context.run(kontext_train, params_file=str(project["params_file"])))
    )
    runner.start()
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (paused := _api(_paused_runs)):
        assert runner.is_alive() and time.monotonic() < deadline, "the run ended or hung without pausing"
        time.sleep(1)
    assert len(paused) == 1
    resume_flow_run(paused[0].id, run_input=answer)
    runner.join(timeout=RUN_TIMEOUT)
    assert not runner.is_alive() and result["approval"]["approval"] == ("approved" if answer["approve"] else "rejected")
    assert wait_final(paused[0].id).state.is_completed()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project['db']}")
    return client, client.get_model_version(model_name, "1")


def test_approval_pause_resumes_on_approve_and_on_reject(project):
    # A fresh registered model each time: its first version wins, so the run asks before promoting.
    try:
        client, version = _paused_answer(
            project, "approve-me", {"approve": True, "note": "looks right", "reviewer": "ana"}
        )
        assert str(client.get_model_version_by_alias("approve-me", "champion").version) == "1"
        assert version.tags["kontext.approval"] == "approved" and version.tags["kontext.approval_note"] == "looks right"
        client, version = _paused_answer(project, "reject-me", {"approve": False, "note": "grids look off"})
        assert version.tags["kontext.approval"] == "rejected"
        assert "kontext.decision" in version.tags and "rejected" in version.tags["kontext.decision"]
        with pytest.raises(Exception, match="champion"):
            client.get_model_version_by_alias("reject-me", "champion")
    finally:
        write_params(project["params_file"], registry={"model_name": "kontext-lora", "require_approval": False})


def test_data_change_fires_the_trigger_and_a_run_refetches(project, workers):
    from flows.data_watch import kontext_data_watch

    params_file = project["params_file"]
    before = {fr.id for fr in _api(_flow_runs_of, "kontext-train-scheduled")}
    assert kontext_data_watch(params_file=str(params_file))["changed"] == []  # first look: baseline
    # A new picture joins a dataset folder (editing a file `init` wrote would be damage that init
    # repairs; a new file is the user's own data).
    caption = sorted((params_file.parent / "data/samples").rglob("*.txt"))[0]
    picture = caption.with_suffix(".png")
    shutil.copy(picture, picture.with_name(f"{picture.stem}_dusk.png"))
    caption.with_name(f"{picture.stem}_dusk.txt").write_text(caption.read_text().strip() + " at dusk\n")
    watched = kontext_data_watch(params_file=str(params_file))
    assert watched["changed"] and watched["event"]
    deadline = time.monotonic() + 120
    while True:
        new = [fr for fr in _api(_flow_runs_of, "kontext-train-scheduled") if fr.id not in before]
        if new or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert new, "the data-change event started no flow run"
    done = wait_final(new[0].id)
    assert done.state.is_completed(), done.state.message
    assert done.parameters["params_file"] == str(params_file.resolve())
    task_runs = settled(_task_runs, done.id, lambda trs: len(trs) >= len(STAGE_ORDER))
    states = {tr.name: tr.state.name for tr in task_runs}
    assert states["init"] == "Skipped" and states["fetch"] == "Completed"


def test_two_workers_on_two_pools_each_run_their_stages(project, workers):
    params_file = project["params_file"]
    # A pair-only setting and a training setting: the data group really runs pair, the gpu group trains.
    write_params(params_file, pair={"max_missing_fraction": 0.6})
    flow_run = run_deployment(
        "kontext-train-placed/kontext-train-placed",
        parameters={"params_file": str(params_file), "settings": {"learning_rate": 0.001}},
        timeout=0,
    )
    done = wait_final(flow_run.id)
    assert done.state.is_completed(), done.state.message
    assert done.work_pool_name == "kontext-cpu"
    children = _api(
        lambda client: client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=False))
        )
    )
    children = [c for c in children if c.start_time and c.start_time >= done.start_time]
    groups = {c.parameters["group"]: c for c in children}
    assert set(groups) == {"data", "gpu"}
    assert groups["data"].work_pool_name == "kontext-cpu" and groups["gpu"].work_pool_name == "kontext-gpu"
    data_runs = settled(_task_runs, groups["data"].id, lambda trs: len(trs) >= 7)
    gpu_runs = settled(_task_runs, groups["gpu"].id, lambda trs: len(trs) >= 3)
    assert {tr.name for tr in gpu_runs} == {"train", "validate", "register"}
    assert {tr.name for tr in data_runs} == set(STAGE_ORDER) - {"train", "validate", "register"}
    assert ran(data_runs) == {"pair"}
    assert ran(gpu_runs) == {"train", "validate", "register"}
    assert read_manifest(Path(params_file).parent, "train")["params"]["learning_rate"] == 0.001
