"""infra/docker-compose.yml: the pieces the team setup needs from the S3 store and the MLflow server."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "infra" / "docker-compose.yml"


def test_mlflow_allows_the_worker_host_and_buckets_exist_before_anyone_uses_them():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    command = services["mlflow"]["command"]
    hosts = command[command.index("--allowed-hosts") + 1].split(",")
    assert "mlflow:5000" in hosts and "localhost:5000" in hosts
    assert command[command.index("--artifacts-destination") + 1].startswith("s3://")
    script = services["minio-init"]["entrypoint"][-1]
    assert all(f"local/{bucket}" in script for bucket in ("mlflow", "dvc", "datasets", "cache"))
    worker = services["prefect-worker"]
    assert worker["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "MLFLOW_S3_ENDPOINT_URL" not in worker["environment"]  # artifacts go through the server
