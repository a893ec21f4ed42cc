"""Links into the MLflow UI for reports: a run, a registered version."""

from __future__ import annotations

import os

import mlflow

# Where links to a file or SQLite store point: the MLflow UI that `make ui-mlflow` serves.
MLFLOW_UI_ENV = "KONTEXT_MLFLOW_UI_URL"
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"


def mlflow_ui_url() -> str:
    """The MLflow UI for links: the tracking server itself when it is one, else KONTEXT_MLFLOW_UI_URL."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return os.environ.get(MLFLOW_UI_ENV, DEFAULT_MLFLOW_UI).rstrip("/")


def run_link(run_id: str) -> str:
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    return f"{mlflow_ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"


def version_link(model_name: str, version: str) -> str:
    return f"{mlflow_ui_url()}/#/models/{model_name}/versions/{version}"


def safe_run_link(run_id: str | None) -> str | None:
    if not run_id:
        return None
    try:
        return run_link(run_id)
    except Exception:  # a run in another store: no link rather than a failed stage
        return None
