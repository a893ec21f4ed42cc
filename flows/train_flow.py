"""The `kontext-train` flow: every stage as a graph, one MLflow run per flow run.

The parameters are the params file, the project folder and the run settings: one typed model
(`flows.form.RunSettings`, the UI's form), layered over the params file. The flow builds the run once
(`kontext_core.run.build_run`), or takes the run `kontext run` built in this process (`handing_over`).
Its body submits the stages in order, each with its upstream stages' futures: Prefect starts a stage
when the stages it reads from are done, the UI draws the pipeline's graph, and independent stages
(cache_vae, cache_text and quantize) run at the same time. Whether a stage is up to date is the
engine's decision alone (`run_stage`); Prefect caches nothing.
"""

# No `from __future__ import annotations`: Prefect reads the signature's types to build the form.
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from pydantic import Field

from flows.form import SETTINGS, RunSettings
from flows.lifecycle import locked_project
from flows.run_log import run_log_bridge
from flows.summary import pipeline_result, publish_run_summary, registered_run_id, stage_summary
from kontext_core.config import ConfigError
from kontext_core.dvc_lock import workspace_after_run
from kontext_core.lifecycle import StopRequested, check_stop, stop_signal
from kontext_core.run import Run, build_run
from kontext_core.stages import STAGE_ORDER, STAGES, outputs_intact
from kontext_core.stages.engine import read_manifest
from kontext_core.tracking import runs
from kontext_core.tracking.lineage import lineage_tags, log_params
from tasks.stage_tasks import stage_task


def stage_dependencies(name: str) -> list[str]:
    """The stages `name` waits for: the ones it reads from; a stage that reads nothing waits for
    `init` (which builds the demo's base model and data)."""
    upstream = list(STAGES[name].upstream)
    if not upstream and name != STAGE_ORDER[0]:
        upstream = [STAGE_ORDER[0]]
    return upstream


# The run an entry point in this process built and hands to the flow it calls (`kontext run`).
_HANDED_OVER: ContextVar[Run | None] = ContextVar("kontext_handed_over_run", default=None)


@contextmanager
def handing_over(run: Run) -> Iterator[None]:
    """Within: a flow called with this run's parameters takes `run` as it is (read, validated and
    walked once by the caller) instead of building it again."""
    token = _HANDED_OVER.set(run)
    try:
        yield
    finally:
        _HANDED_OVER.reset(token)


def the_run(params_file: str, workdir: str | None, settings: RunSettings) -> Run:
    """The run these flow parameters describe: the one handed over in this process, else built here
    (a deployment, the UI, a direct call): the params file read and validated once."""
    handed = _HANDED_OVER.get()
    if handed is not None and handed.is_for(params_file, workdir, settings):
        return handed
    try:
        return build_run(params_file, workdir, settings)
    except ConfigError as exc:
        logger = get_run_logger()
        for line in exc.problems:
            logger.error(line)
        raise


def _require_done_elsewhere(name: str, project: Path) -> None:
    """A stage that another flow run (another stage group) must have run in this project."""
    manifest = read_manifest(project, name)
    if manifest is None or not outputs_intact(name, project, manifest["fingerprint"]):
        raise RuntimeError(
            f"stage {name} has not run in {project.name} (its outputs are missing): run its stage group first"
        )


def _stage_result(name: str, future: PrefectFuture, run: Run) -> dict[str, Any]:
    """Stage `name`'s manifest once its task is done (its error raised), with its Prefect state and wall
    seconds (the walk's check of the stage included)."""
    try:
        manifest = dict(future.result())
    except StopRequested:
        raise
    except BaseException as exc:
        if stop_signal() is None:
            raise
        # Prefect reports a stage stopped by a signal as crashed: the stop is what happened.
        raise StopRequested(stop_signal() or "", f"stage {name}") from exc
    manifest["prefect_state"] = future.state.name
    if (check := run.check(name)) is not None:
        manifest["wall_seconds"] += check.seconds
    return manifest


def _import_model_libraries() -> None:
    """diffusers and transformers resolve their classes on first use (`from diffusers import
    AutoencoderKL` imports the submodule then), and two stage threads doing it at once can see a
    half-made module: "cannot import name 'AutoencoderKL' from 'diffusers'" (cache_vae beside
    cache_text). The flow's own thread resolves every class the stages import, before any starts."""
    import diffusers
    import transformers

    for name in ("AutoencoderKL", "FlowMatchEulerDiscreteScheduler", "FluxKontextPipeline", "FluxTransformer2DModel"):
        getattr(diffusers, name)
    for name in ("CLIPTextConfig", "CLIPTextModel", "CLIPTokenizer", "T5Config", "T5EncoderModel", "T5TokenizerFast"):
        getattr(transformers, name)
    import diffusers.models.attention  # noqa: F401
    import diffusers.optimization  # noqa: F401


def run_stages(run: Run, logger: Any, only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The pipeline: every stage submitted in order with its upstream stages' futures (Prefect starts
    it once they are done; a failed one stops what depends on it), then the manifests collected.

    With `only`, the other stages are not run here: their outputs must be in the project already.
    """
    wanted = [name for name in STAGE_ORDER if only is None or name in only]
    for name in STAGE_ORDER:
        if name not in wanted and any(name in stage_dependencies(w) for w in wanted):
            _require_done_elsewhere(name, run.project)
    if not run.up_to_date:
        _import_model_libraries()
    futures: dict[str, PrefectFuture] = {}
    for name in wanted:
        futures[name] = stage_task(name, run).submit(
            name=name,
            run=run,
            fingerprint=run.fingerprint(name),
            upstream={dep: futures[dep] for dep in stage_dependencies(name) if dep in futures},
        )
    manifests: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        manifests[name] = _stage_result(name, future, run)
        logger.info(stage_summary(name, manifests[name]))
    check_stop("the end of the stage that was running")
    return manifests


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
def run_pipeline(run: Run, only: list[str] | None = None) -> dict[str, Any]:
    logger = get_run_logger()
    if run.overrides:
        overrides = ", ".join(f"{k}={v}" for k, v in run.overrides.items())
        logger.info("run overrides over %s: %s", run.params_path.name, overrides)
    return _pipeline(run.walked(), only, logger)


def _pipeline(run: Run, only: list[str] | None, logger: Any) -> dict[str, Any]:
    params, project = run.params, run.project
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
    # Every stage up to date (the run's one walk): no new MLflow run; the result names the run that
    # produced the outputs.
    reused = run.up_to_date
    logs_to_mlflow = [name for name, spec in STAGES.items() if spec.mlflow]  # read now: plugins too
    opens_run = not reused and (only is None or any(name in only for name in logs_to_mlflow))
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
            client.set_tag(run_id, "kontext.overrides", json.dumps(run.overrides, sort_keys=True))
        with run_log_bridge(flow_run.id):
            manifests = run_stages(run, logger, only)
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
    result = pipeline_result(manifests, params.registry.metric, run_id=run_id, reused=reused, overrides=run.overrides)
    result["approval"] = approval
    if only is None:
        # Every flow run, from the CLI or a deployment, leaves dvc.lock and the workspace in step (under
        # the project lock this function runs in).
        result["workspace"] = workspace_after_run(project, run.params_path, run.overrides, registration)
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
    settings: RunSettings = SETTINGS,
) -> dict[str, Any]:
    """Fine-tune a FLUX.1 Kontext LoRA: the stages of the params file with this run's settings layered
    over it; stages whose inputs did not change are skipped."""
    return run_pipeline(the_run(params_file, workdir, settings))
