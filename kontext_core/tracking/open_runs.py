"""Which pipeline runs of a project are open, so that a killed process cannot leave one RUNNING.

Under DVC a pipeline run spans processes (train opens it, register closes it), so no single
process can close it from a `finally`. Each run is written down here when it starts and struck off
when it ends; the next `start_run` in the project ends whatever is still listed as FAILED (a
`kill -9` leaves no other trace). The list lives outside every stage's outputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from kontext_core.config import Params
from kontext_core.fsutil import write_json

log = logging.getLogger(__name__)

OPEN_RUNS_FILE = "artifacts/mlflow/open_runs.json"


def _path(workdir: Path) -> Path:
    return Path(workdir) / OPEN_RUNS_FILE


def listed(workdir: Path) -> list[str]:
    path = _path(workdir)
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text()))
    except (OSError, ValueError):
        return []


def remember(workdir: Path, run_id: str) -> None:
    write_json(_path(workdir), [*[r for r in listed(workdir) if r != run_id], run_id])


def forget(workdir: Path, run_id: str) -> None:
    if run_id in listed(workdir):
        write_json(_path(workdir), [r for r in listed(workdir) if r != run_id])


def fail_abandoned(client: mlflow.MlflowClient, workdir: Path) -> list[str]:
    """End every listed run that is still RUNNING as FAILED; returns their ids."""
    failed = []
    for run_id in listed(workdir):
        try:
            status = client.get_run(run_id).info.status
        except MlflowException:
            status = None  # another store, or deleted: nothing to end here
        if status == "RUNNING":
            client.set_tag(run_id, "kontext.failure", "abandoned: its process ended without closing it (killed?)")
            client.set_terminated(run_id, status="FAILED")
            log.warning("MLflow run %s was left RUNNING by a process that died; ended it as FAILED", run_id)
            failed.append(run_id)
        forget(workdir, run_id)
    return failed


def fail_open(workdir: Path, reason: str, params: Params | Path, status: str = "FAILED") -> list[str]:
    """End the project's open runs as FAILED now (a stage raised under `kontext stage`; KILLED when a
    stop signal stopped it). `params`: the run's params, or the params file when none could be built."""
    if not listed(workdir):
        return []
    from kontext_core.config import load_params
    from kontext_core.tracking.store import tracking_uri

    try:
        resolved = params if isinstance(params, Params) else load_params(params)
        client = mlflow.MlflowClient(tracking_uri=tracking_uri(resolved, Path(workdir)))
    except Exception:  # an unreadable params file: the next start_run still ends the runs
        return []
    failed = []
    for run_id in listed(workdir):
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "kontext.failure", reason[:5000])
                client.set_terminated(run_id, status=status)
                failed.append(run_id)
        except MlflowException:
            pass
        forget(workdir, run_id)
    return failed
