"""The `kontext-train` flow: every stage in order, one MLflow run per flow run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.summary import run_outcome
from kontext_core.config import load_params
from kontext_core.stages import STAGE_ORDER, fingerprint, outputs_intact
from kontext_core.tracking import runs
from kontext_core.tracking.lineage import lineage_tags, log_params
from tasks.stage_tasks import STAGE_TASKS


# No log_prints: the stages log through `logging`, and Prefect's print hook defeats libraries that
# capture stdout themselves (dill disassembles functions into a captured stdout while hashing).
@flow(name="kontext-train")
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
    run_id = runs.start_run(params, project, run_name=flow_run.name)
    os.environ[runs.RUN_ID_ENV] = run_id
    client = mlflow.MlflowClient()
    status = "FAILED"
    manifests: dict[str, dict[str, Any]] = {}
    try:
        log_params(client, run_id, params)
        for name in STAGE_ORDER:
            started = time.perf_counter()
            # Taken once: the task's cache key and the stage's up-to-date check both use it.
            fp = fingerprint(name, params, project)
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
            logger.info("stage %s: %s", name, "skipped (up to date)" if manifest["skipped"] else "ran")
        skipped = [n for n, m in manifests.items() if m.get("skipped")]
        tags = lineage_tags(project)
        tags["kontext.stages_run"] = ",".join(n for n in STAGE_ORDER if n not in skipped) or "none"
        tags["kontext.adapter_run_id"] = manifests["train"]["info"].get("run_id", "")
        runs.set_tags(run_id, tags)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    registration = manifests["register"]["info"]
    logger.info("registered %s (champion: %s)", registration["model_uri"], registration["alias_uri"])
    return {
        "mlflow_run_id": run_id,
        "model_uri": registration["model_uri"],
        "alias_uri": registration["alias_uri"],
        "stages": {n: ("skipped" if m.get("skipped") else "ran") for n, m in manifests.items()},
        "prefect_states": {n: m["prefect_state"] for n, m in manifests.items()},
        "seconds": {n: round(m["wall_seconds"], 3) for n, m in manifests.items()},
        "outcome": run_outcome(manifests, params.registry.metric),
    }
