"""MLflow runs: one per pipeline run, with the tags that trace it back to code, data and Prefect."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import mlflow

from kontext_core.config import Params
from kontext_core.tracking.environment import environment_tags
from kontext_core.tracking.store import tracking_uri, use_store

log = logging.getLogger(__name__)

RUN_ID_ENV = "KONTEXT_MLFLOW_RUN_ID"


def configure(params: Params, workdir: Path) -> str:
    """Point mlflow at the store and make sure the experiment exists; returns its id."""
    experiment = open_store(params, workdir)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(
        params.mlflow.experiment_name, artifact_location=_artifact_location(params, workdir)
    )


def _artifact_location(params: Params, workdir: Path) -> str | None:
    location = params.mlflow.artifact_location
    if location and on_server(mlflow.get_tracking_uri()) and ":" not in location.split("/")[0]:
        # A tracking server: a project path means nothing to it; its own artifact store (the proxied
        # `mlflow-artifacts:`, e.g. a bucket behind `--artifacts-destination s3://...`) is the place.
        location = None
    if location and "://" not in location and ":" not in location.split("/")[0]:
        location = (workdir / location).resolve().as_uri()
    return location


def open_store(params: Params, workdir: Path) -> Any:
    """Point mlflow at the project's store (readers: `kontext edit`, export) and return its experiment
    (None when it does not exist yet); a moved or copied project's artifact locations follow it."""
    uri = tracking_uri(params, workdir)
    use_store(uri)
    if on_server(uri):
        # Download artifacts through the server, as uploads go: the bucket's endpoint (and keys) may
        # be unknown here. MLflow 3 would otherwise fetch presigned URLs from the store directly.
        os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
    experiment = mlflow.get_experiment_by_name(params.mlflow.experiment_name)
    if experiment is not None:
        _follow_the_project(uri, workdir, experiment.artifact_location, _artifact_location(params, workdir))
    return experiment


def _follow_the_project(uri: str, workdir: Path, recorded: str | None, expected: str | None) -> None:
    """A project-relative artifact location recorded where the project used to live (it was moved or
    copied, its SQLite store with it): point the store at the project's own `mlruns` again."""
    from kontext_core.tracking.store import relocate_artifacts

    if not recorded or not expected or recorded == expected or not recorded.startswith("file:"):
        return
    if Path(recorded).name != Path(expected).name:
        return  # another location was chosen on purpose: not a move
    changed = relocate_artifacts(uri, workdir, recorded, expected)
    if changed:
        log.warning(
            "the project moved: MLflow artifact locations rewritten from %s to %s (%d rows)",
            recorded,
            expected,
            changed,
        )


def on_server(uri: str) -> bool:
    """A tracking URI that names an MLflow server (http/https), not a local store."""
    return uri.startswith(("http://", "https://"))


def git_info(workdir: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=workdir, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    info = {"git.commit": commit or "unknown", "git.dirty": str(dirty).lower()}
    if branch and branch != "HEAD":
        info["git.branch"] = branch
    return info


def prefect_info() -> dict[str, str]:
    """The Prefect flow run this process runs in, if any (read without importing Prefect)."""
    flow_run_id = os.environ.get("KONTEXT_PREFECT_FLOW_RUN_ID") or os.environ.get("PREFECT__FLOW_RUN_ID")
    tags = {}
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    if name := os.environ.get("KONTEXT_PREFECT_FLOW_RUN_NAME"):
        tags["prefect.flow_run_name"] = name
    if url := os.environ.get("KONTEXT_PREFECT_FLOW_RUN_URL"):
        tags["prefect.flow_run_url"] = url
    return tags


def start_run(params: Params, workdir: Path, run_name: str | None = None) -> str:
    """Start a new pipeline run with lineage tags; returns its id (the run is left open).

    A new pipeline run supersedes any earlier one of this project that nothing closed (its process
    was killed): those are ended FAILED first, so no run stays RUNNING forever.
    """
    from kontext_core.tracking.open_runs import fail_abandoned, remember

    experiment_id = configure(params, workdir)
    client = mlflow.MlflowClient()
    fail_abandoned(client, workdir)
    orchestrator = "prefect" if prefect_info() else "cli"
    entry_point = "flows/train_flow.py:kontext_train" if orchestrator == "prefect" else "kontext stage"
    tags = {
        **git_info(workdir),
        **source_tags(workdir, entry_point),
        **prefect_info(),
        "kontext.orchestrator": orchestrator,
    }
    # Library versions, device and changed files: what `kontext reproduce` checks against.
    tags.update(environment_tags(workdir))
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    remember(workdir, run.info.run_id)
    return run.info.run_id


def end_run(run_id: str, workdir: Path, status: str, reason: str | None = None) -> None:
    """End a pipeline run (FINISHED or FAILED, with the reason as a tag) and forget it as open."""
    from kontext_core.tracking.open_runs import forget

    client = mlflow.MlflowClient()
    if reason:
        client.set_tag(run_id, "kontext.failure", reason[:5000])
    client.set_terminated(run_id, status=status)
    forget(workdir, run_id)


def current_run_id(params: Params, workdir: Path, fallback_file: Path | None = None) -> str:
    """The pipeline run to log into: the env var set by the flow, a recorded one, or a new one."""
    configure(params, workdir)
    if run_id := os.environ.get(RUN_ID_ENV):
        return run_id
    if fallback_file is not None and fallback_file.exists():
        import json

        return json.loads(fallback_file.read_text())["run_id"]
    return start_run(params, workdir)


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def source_tags(workdir: Path, entry_point: str) -> dict[str, str]:
    """MLflow's own lineage tags (`mlflow.source.*`, `mlflow.user`), which its UI shows on every run."""
    import getpass

    git = git_info(workdir)
    tags = {"mlflow.source.name": entry_point, "mlflow.source.type": "LOCAL"}
    if git["git.commit"] != "unknown":
        tags["mlflow.source.git.commit"] = git["git.commit"]
    if git.get("git.branch"):
        tags["mlflow.source.git.branch"] = git["git.branch"]
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):
        pass
    return tags
