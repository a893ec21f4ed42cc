"""The `kontext-train` flow: every stage in order, one MLflow run per flow run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.lifecycle import locked_project
from flows.summary import run_outcome
from kontext_core.config import Params, load_params
from kontext_core.stages import STAGE_ORDER, Fingerprint, fingerprint, outputs_intact
from kontext_core.tracking import runs
from kontext_core.tracking.lineage import lineage_tags, log_params
from tasks.stage_tasks import STAGE_TASKS


def _leading_fingerprints(params: Params, project: Path) -> dict[str, Fingerprint]:
    """Fingerprints of the stages in order, up to and including the first that is not up to date.

    They stay valid until a stage runs (nothing upstream of them changes before), so the loop uses
    them instead of taking them again; all of them up to date means the flow opens no MLflow run.
    """
    taken: dict[str, Fingerprint] = {}
    try:
        for name in STAGE_ORDER:
            taken[name] = fingerprint(name, params, project)
            if not outputs_intact(name, project, taken[name].value):
                break
    except Exception:  # a config or missing-input error: the stage loop reports it properly
        pass
    return taken


# No log_prints: the stages log through `logging`, and Prefect's print hook defeats libraries that
# capture stdout themselves (dill disassembles functions into a captured stdout while hashing).
@flow(name="kontext-train")
@locked_project
def kontext_train(params_file: str = "params.yaml", workdir: str | None = None) -> dict[str, Any]:
    logger = get_run_logger()
    params_path = Path(params_file).resolve()
    project = Path(workdir).resolve() if workdir else params_path.parent
    params = load_params(params_path)
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
    if flow_run.ui_url:
        os.environ["KONTEXT_PREFECT_FLOW_RUN_URL"] = str(flow_run.ui_url)
    # All cached: no new MLflow run; the result names the run that produced the outputs.
    leading = _leading_fingerprints(params, project)
    reused = len(leading) == len(STAGE_ORDER) and outputs_intact(
        STAGE_ORDER[-1], project, leading[STAGE_ORDER[-1]].value
    )
    if reused:
        # registration.json names the run the registered outputs were logged to.
        run_id = json.loads((project / "artifacts/register/registration.json").read_text())["run_id"]
        logger.info("every stage is up to date: no new MLflow run (the outputs come from run %s)", run_id)
    else:
        run_id = runs.start_run(params, project, run_name=flow_run.name)
        os.environ[runs.RUN_ID_ENV] = run_id
    client = mlflow.MlflowClient()
    status = "FAILED"
    failure: str | None = None
    manifests: dict[str, dict[str, Any]] = {}
    try:
        if not reused:
            log_params(client, run_id, params)
        ran_any = False
        for name in STAGE_ORDER:
            started = time.perf_counter()
            # Taken once: the task's cache key and the stage's up-to-date check both use it.
            fp = leading[name] if name in leading and not ran_any else fingerprint(name, params, project)
            # Prefect's cache only answers for outputs that still exist on disk.
            stage_task = STAGE_TASKS[name].with_options(
                refresh_cache=not outputs_intact(name, project, fp.value),
                retries=params.prefect.task_retries,
                retry_delay_seconds=params.prefect.retry_delay_seconds,
            )
            state = stage_task(name=name, params=params, workdir=str(project), fingerprint=fp, return_state=True)
            manifest = dict(state.result())
            manifest["skipped"] = bool(manifest.get("skipped")) or state.name == "Cached"
            manifest["prefect_state"] = state.name
            # Wall time as the user waits for it: fingerprint, Prefect task and cache lookup, the stage.
            manifest["wall_seconds"] = time.perf_counter() - started
            manifests[name] = manifest
            ran_any = ran_any or not manifest["skipped"]
            logger.info("stage %s: %s", name, "skipped (up to date)" if manifest["skipped"] else "ran")
        skipped = [n for n, m in manifests.items() if m.get("skipped")]
        if not reused:
            tags = lineage_tags(project)
            tags["kontext.stages_run"] = ",".join(n for n in STAGE_ORDER if n not in skipped) or "none"
            tags["kontext.adapter_run_id"] = manifests["train"]["info"].get("run_id", "")
            runs.set_tags(run_id, tags)
        status = "FINISHED"
    except BaseException as exc:
        failure = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if not reused:
            runs.end_run(run_id, project, status, failure)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    registration = manifests["register"]["info"]
    if not manifests["register"].get("skipped"):
        logger.info("registered %s: %s", registration["model_uri"], registration.get("reason", ""))
    return {
        "mlflow_run_id": run_id,
        "mlflow_run_reused": reused,
        "decision": registration.get("decision"),
        "reason": registration.get("reason"),
        "model_uri": registration["model_uri"],
        "alias_uri": registration["alias_uri"],
        "stages": {n: ("skipped" if m.get("skipped") else "ran") for n, m in manifests.items()},
        "prefect_states": {n: m["prefect_state"] for n, m in manifests.items()},
        "seconds": {n: round(m["wall_seconds"], 3) for n, m in manifests.items()},
        "outcome": run_outcome(manifests, params.registry.metric),
    }
