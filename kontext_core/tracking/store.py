"""Which MLflow store a project uses, and pointing this process at it."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

from kontext_core.config import Params


def tracking_uri(params: Params, workdir: Path) -> str:
    """MLFLOW_TRACKING_URI wins; a relative SQLite path is made relative to the project."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str((workdir / uri[len(prefix) :]).resolve())
    return uri


def use_store(uri: str) -> None:
    """Point this process's mlflow client at `uri` without exporting it.

    `mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI into the environment, which would
    then override the next project's params.yaml in the same process; the variable is restored.
    """
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
