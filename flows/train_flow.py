"""The `kontext-train` flow: every stage as a graph, one MLflow run per flow run.

The parameters are the params file, the project folder and the run settings of the UI's form
(`flows/form.py`), layered over the params file. Each stage task receives its upstream stages'
futures, so the UI draws the pipeline's graph, and independent stages (cache_vae, cache_text and
quantize) run at the same time.
"""

# No `from __future__ import annotations`: Prefect reads the signature's types to build the form.
import json
import os
import time
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from pydantic import Field

from flows.form import D, T
from flows.lifecycle import locked_project
from flows.run_log import run_log_bridge
from flows.summary import pipeline_result, publish_run_summary, registered_run_id, stage_summary
from kontext_core.config import ConfigError, Params, read_params_file
from kontext_core.config.overrides import OVERRIDE_KEYS, layered_params
from kontext_core.dvc_lock import workspace_after_run
from kontext_core.lifecycle import StopRequested, check_stop, stop_signal
from kontext_core.stages import STAGE_ORDER, STAGES, Fingerprint, fingerprint, outputs_intact
from kontext_core.stages.engine import read_manifest
from kontext_core.stages.uptodate import check_in_order
from kontext_core.tracking import runs
from kontext_core.tracking.lineage import lineage_tags, log_params
from tasks.stage_tasks import STAGE_TASKS

# Bounded polling of running stage futures (seconds per look).
POLL_SECONDS = 0.2


def stage_dependencies(name: str) -> list[str]:
    """The stages `name` waits for: the ones it reads from; a stage that reads nothing waits for
    `init` (which builds the demo's base model and data)."""
    upstream = list(STAGES[name].upstream)
    if not upstream and name != STAGE_ORDER[0]:
        upstream = [STAGE_ORDER[0]]
    return upstream


def _leading_fingerprints(params: Params, project: Path) -> dict[str, Fingerprint]:
    """Fingerprints of the stages in order, up to and including the first that is not up to date.

    A stage's fingerprint stays valid while none of its upstream stages runs, so the loop reuses it
    then; all of them up to date means the flow opens no MLflow run.
    """
    taken: dict[str, Fingerprint] = {}
    try:
        for check in check_in_order(params, project):
            taken[check.name] = check.fingerprint
    except Exception:  # a config or missing-input error: the stage loop reports it properly
        pass
    return taken


def preflight(params: Params, project: Path) -> None:
    """Checks of a run's settings that need no stage to have run: one line per problem."""
    from kontext_core.model.adapter_kinds import ADAPTER_KINDS

    problems = []
    if params.lora_type not in ADAPTER_KINDS:
        problems.append(f"lora_type = {params.lora_type!r}: unknown adapter kind; allowed: {', '.join(ADAPTER_KINDS)}")
    dataset_file = project / params.data_backend_config
    if not dataset_file.is_file():
        problems.append(f"data_backend_config = {params.data_backend_config!r}: no such file in the project")
    if problems:
        raise ConfigError(problems)


def resolve_run(
    params_file: str, workdir: str | None, overrides: dict[str, Any]
) -> tuple[Params, Path, dict[str, Any]]:
    """The params file with the run's overrides, the project folder and the overrides used."""
    params_path = Path(params_file)
    if not params_path.is_absolute() and workdir:
        params_path = Path(workdir) / params_path
    params_path = params_path.resolve()
    project = Path(workdir).resolve() if workdir else params_path.parent
    params, used = layered_params(read_params_file(params_path), overrides, where=params_path.name)
    preflight(params, project)
    return params, project, used


def _done_elsewhere(name: str, project: Path) -> dict[str, Any]:
    """The manifest of a stage that another flow run (another stage group) ran in this project."""
    manifest = read_manifest(project, name)
    if manifest is None or not outputs_intact(name, project, manifest["fingerprint"]):
        raise RuntimeError(
            f"stage {name} has not run in {project.name} (its outputs are missing): run its stage group first"
        )
    return {**manifest, "skipped": True, "prefect_state": "Elsewhere", "wall_seconds": 0.0}


def _run_stages(
    params: Params,
    project: Path,
    leading: dict[str, Fingerprint],
    logger: Any,
    only: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Submit each stage as soon as the stages it depends on are done; collect the manifests.

    With `only`, the other stages are not run here: their outputs must be in the project already.
    """
    manifests: dict[str, dict[str, Any]] = {}
    running: dict[str, tuple[PrefectFuture, float]] = {}
    futures: dict[str, PrefectFuture] = {}
    pending = [name for name in STAGE_ORDER if only is None or name in only]
    needed = {dep for name in pending for dep in stage_dependencies(name)}
    for name in STAGE_ORDER:
        if name in needed and name not in pending:
            manifests[name] = _done_elsewhere(name, project)
    while pending or running:
        if stop_signal() is not None:
            pending.clear()  # no new stage starts; the running ones stop at their next safe point
        for name in list(pending):
            deps = stage_dependencies(name)
            if not all(dep in manifests for dep in deps):
                continue
            pending.remove(name)
            started = time.perf_counter()
            upstream_ran = any(not manifests[dep]["skipped"] for dep in STAGES[name].upstream)
            # Taken once: the task's cache key and the stage's up-to-date check both use it.
            fp = leading[name] if name in leading and not upstream_ran else fingerprint(name, params, project)
            # Prefect's cache only answers for outputs that still exist on disk.
            stage_task = STAGE_TASKS[name].with_options(
                refresh_cache=not outputs_intact(name, project, fp.value),
                retries=params.prefect.task_retries,
                retry_delay_seconds=params.prefect.retry_delay_seconds,
            )
            futures[name] = stage_task.submit(
                name=name,
                params=params,
                workdir=str(project),
                fingerprint=fp,
                upstream={dep: futures[dep] for dep in deps if dep in futures},
            )
            running[name] = (futures[name], started)
        for name, (future, started) in list(running.items()):
            future.wait(timeout=POLL_SECONDS)
            state = future.state
            if not state.is_final():
                continue
            del running[name]
            try:
                manifest = dict(future.result())  # raises the stage's error
            except BaseException as exc:
                if stop_signal() is None:
                    raise
                # Prefect reports a stage stopped by a signal as crashed: the stop is what happened.
                raise StopRequested(stop_signal() or "", f"stage {name}") from exc
            manifest["skipped"] = bool(manifest.get("skipped")) or state.name == "Cached"
            manifest["prefect_state"] = state.name
            # Wall time as the user waits for it: fingerprint, Prefect task and cache lookup, the stage.
            manifest["wall_seconds"] = time.perf_counter() - started
            manifests[name] = manifest
            logger.info(stage_summary(name, manifest))
    check_stop("the end of the stage that was running")
    return {name: manifests[name] for name in STAGE_ORDER if only is None or name in only}


def flow_run_ui_url(flow_run_id: str) -> str | None:
    """The flow run's page in the Prefect UI (`<ui>/runs/flow-run/<id>`, the path the UI routes; Prefect's
    own `flow_run.ui_url` names `/flow-runs/...`), or None under an ephemeral server: it has no UI, and
    it is gone when the command ends, so the MLflow run gets no link rather than a dead one."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    base = PREFECT_UI_URL.value() if PREFECT_API_URL.value() else None
    return f"{str(base).rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


# Stages that log into the flow run's MLflow run: a stage group without them opens none.
MLFLOW_STAGES = tuple(name for name, spec in STAGES.items() if spec.mlflow)


# The project lock (one pipeline per project on this machine; re-entrant for the stage threads) and
# the cleanup of what interrupted runs left: taken by each stage group's flow run, not by a placed
# run's parent, whose groups run in other processes.
@locked_project
def run_pipeline(
    params_file: str, workdir: str | None, overrides: dict[str, Any], only: list[str] | None = None
) -> dict[str, Any]:
    logger = get_run_logger()
    try:
        params, project, used = resolve_run(params_file, workdir, overrides)
    except ConfigError as exc:
        for line in exc.problems:
            logger.error(line)
        raise
    if used:
        logger.info("run overrides over %s: %s", Path(params_file).name, ", ".join(f"{k}={v}" for k, v in used.items()))
    params_path = Path(params_file) if Path(params_file).is_absolute() or not workdir else Path(workdir) / params_file
    return _pipeline(params, project, used, only, logger, params_path)


def _pipeline(
    params: Params,
    project: Path,
    used: dict[str, Any],
    only: list[str] | None,
    logger: Any,
    params_path: Path | None = None,
) -> dict[str, Any]:
    saved_env = {
        k: os.environ.get(k)
        for k in (
            runs.RUN_ID_ENV,
            "KONTEXT_PREFECT_FLOW_RUN_ID",
            "KONTEXT_PREFECT_FLOW_RUN_NAME",
            "KONTEXT_PREFECT_FLOW_RUN_URL",
        )
    }
    os.environ["KONTEXT_PREFECT_FLOW_RUN_ID"] = str(flow_run.id)
    os.environ["KONTEXT_PREFECT_FLOW_RUN_NAME"] = str(flow_run.name)
    if url := flow_run_ui_url(str(flow_run.id)):
        os.environ["KONTEXT_PREFECT_FLOW_RUN_URL"] = url
    # All cached: no new MLflow run; the result names the run that produced the outputs.
    leading = _leading_fingerprints(params, project)
    reused = len(leading) == len(STAGE_ORDER) and outputs_intact(
        STAGE_ORDER[-1], project, leading[STAGE_ORDER[-1]].value
    )
    opens_run = not reused and (only is None or any(name in only for name in MLFLOW_STAGES))
    run_id: str | None = None
    if reused:
        # registration.json names the run the registered outputs were logged to.
        run_id = registered_run_id(project)
        logger.info("every stage is up to date: no new MLflow run (the outputs come from run %s)", run_id)
    elif opens_run:
        run_id = runs.start_run(params, project, run_name=flow_run.name)
        os.environ[runs.RUN_ID_ENV] = run_id
    client = mlflow.MlflowClient()
    status = "FAILED"
    failure: str | None = None
    manifests: dict[str, dict[str, Any]] = {}
    approval: dict[str, Any] | None = None
    try:
        if opens_run and run_id:
            log_params(client, run_id, params)
            client.set_tag(run_id, "kontext.overrides", json.dumps(used, sort_keys=True))
        with run_log_bridge(flow_run.id):
            manifests = _run_stages(params, project, leading, logger, only)
            register = manifests.get("register", {})
            if register and not register["skipped"] and register["info"].get("awaiting_approval"):
                from flows.approval import ask_for_approval

                approval = ask_for_approval(params, project, manifests, run_id or "")
                register["info"].update(approval)
        skipped = [n for n, m in manifests.items() if m.get("skipped")]
        if opens_run and run_id:
            tags = lineage_tags(project)
            tags["kontext.stages_run"] = ",".join(n for n in manifests if n not in skipped) or "none"
            if "train" in manifests:
                tags["kontext.adapter_run_id"] = manifests["train"]["info"].get("run_id", "")
            runs.set_tags(run_id, tags)
        status = "FINISHED"
    except BaseException as exc:
        failure = f"{type(exc).__name__}: {exc}"
        # A stop request ends the run KILLED (what MLflow's UI shows for a run stopped on purpose).
        if isinstance(exc, StopRequested | KeyboardInterrupt) or stop_signal() is not None:
            status = "KILLED"
        raise
    finally:
        if opens_run and run_id:
            runs.end_run(run_id, project, status, failure)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    registration = manifests.get("register", {}).get("info", {})
    if "register" in manifests and not manifests["register"].get("skipped"):
        logger.info("registered %s: %s", registration["model_uri"], registration.get("reason", ""))
    result = pipeline_result(manifests, params.registry.metric, run_id=run_id, reused=reused, overrides=used)
    result["approval"] = approval
    if params_path is not None and only is None:
        # Every flow run, from the CLI or a deployment, leaves dvc.lock and the workspace in step (under
        # the project lock this function runs in).
        result["workspace"] = workspace_after_run(project, params_path, used, registration)
        for line in result["workspace"].values():
            if line:
                logger.info(line)
    publish_run_summary(params, result)
    return result


# No log_prints: the stages log through `logging`, and Prefect's print hook defeats libraries that
# capture stdout themselves (dill disassembles functions into a captured stdout while hashing).
@flow(name="kontext-train")
def kontext_train(
    params_file: str = Field(
        "params.yaml", description="The params file (params.yaml or SimpleTuner's config.json), relative to workdir."
    ),
    workdir: str | None = Field(None, description="The project folder (a checkout); empty: the params file's folder."),
    learning_rate: T.learning_rate = D.learning_rate,
    max_train_steps: T.max_train_steps = D.max_train_steps,
    num_train_epochs: T.num_train_epochs = D.num_train_epochs,
    lora_rank: T.lora_rank = D.lora_rank,
    lora_alpha: T.lora_alpha = D.lora_alpha,
    lora_type: T.lora_type = D.lora_type,
    base_model_precision: T.base_model_precision = D.base_model_precision,
    optimizer: T.optimizer = D.optimizer,
    lr_scheduler: T.lr_scheduler = D.lr_scheduler,
    seed: T.seed = D.seed,
    validation_guidance: T.validation_guidance = D.validation_guidance,
    validation_num_inference_steps: T.validation_num_inference_steps = D.validation_num_inference_steps,
    validation_prompt: T.validation_prompt = D.validation_prompt,
    validation_resolution: T.validation_resolution = D.validation_resolution,
    data_backend_config: T.data_backend_config = D.data_backend_config,
    pretrained_model_name_or_path: T.pretrained_model_name_or_path = D.pretrained_model_name_or_path,
) -> dict[str, Any]:
    """Fine-tune a FLUX.1 Kontext LoRA: the stages of the params file with this run's settings layered
    over it; stages whose inputs did not change are skipped."""
    given = locals()
    return run_pipeline(params_file, workdir, {key: given[key] for key in OVERRIDE_KEYS})
