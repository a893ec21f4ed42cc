"""Lineage for MLflow runs: params, stage fingerprints and the content hashes of the data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from kontext_core.config import Params

MANIFEST_DIR = "artifacts/manifests"


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out[prefix] = str(value)[:6000]


def flat_params(params: Params) -> dict[str, str]:
    out: dict[str, str] = {}
    _flatten("", params.model_dump(), out)
    return out


def log_params(client: mlflow.MlflowClient, run_id: str, params: Params) -> None:
    """Log every parameter; a run that already holds them (same values) is left as it is."""
    from mlflow.entities import Param

    run = client.get_run(run_id)
    existing = run.data.params
    new = [Param(k, v) for k, v in flat_params(params).items() if k not in existing]
    for start in range(0, len(new), 100):
        try:
            client.log_batch(run_id, params=new[start : start + 100])
        except MlflowException as exc:
            raise RuntimeError(f"MLflow run {run_id} holds different params: {exc}") from exc


def lineage_tags(workdir: Path) -> dict[str, str]:
    """Fingerprints of every stage that has run, and the data hashes `fetch` saw."""
    tags: dict[str, str] = {}
    manifest_dir = Path(workdir) / MANIFEST_DIR
    for path in sorted(manifest_dir.glob("*.json")):
        manifest = json.loads(path.read_text())
        tags[f"kontext.fingerprint.{manifest['stage']}"] = manifest["fingerprint"]
        if manifest["stage"] == "fetch":
            for key, value in manifest["inputs"].items():
                if key.startswith("dataset:") or key == "data_backend_config":
                    tags[f"kontext.data.{key.removeprefix('dataset:')}"] = (
                        value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                    )
    return tags


def tag_stage_run(run_id: str, workdir: Path, stage: str, fingerprint: str) -> None:
    """Tag the MLflow run with every stage fingerprint so far, `stage` (running now) included."""
    from kontext_core.tracking.runs import set_tags

    set_tags(run_id, {**lineage_tags(workdir), f"kontext.fingerprint.{stage}": fingerprint})
