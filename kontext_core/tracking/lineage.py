"""Lineage for MLflow runs: params, stage fingerprints and the content hashes of the data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from kontext_core.config import Params

MANIFEST_DIR = "artifacts/manifests"
# The base model the stages read: a local folder's content hash, or a hub id and its resolved commit.
BASE_MODEL_TAG = "kontext.base_model"
BASE_MODEL_STAGE = "quantize"


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
        base = manifest["inputs"].get("base_model")
        # quantize's: it runs before train whenever the base changes, while a later reader's
        # manifest (validate's) still names the previous base until that stage has run again.
        if base is not None and (manifest["stage"] == BASE_MODEL_STAGE or BASE_MODEL_TAG not in tags):
            tags[BASE_MODEL_TAG] = json.dumps(base, sort_keys=True)
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


def dataset_digests(workdir: Path) -> dict[str, tuple[str, str]]:
    """dataset id -> (digest, source) from fetch's manifest: the hashes its fingerprint used."""
    path = Path(workdir) / MANIFEST_DIR / "fetch.json"
    if not path.exists():
        return {}
    out = {}
    for key, value in json.loads(path.read_text())["inputs"].items():
        if not key.startswith("dataset:"):
            continue
        if isinstance(value, str):
            out[key.removeprefix("dataset:")] = (value, "local")
        else:
            # A hub id: its digest is that of what it names (id, split, revision).
            from kontext_core.fsutil import sha256_json

            out[key.removeprefix("dataset:")] = (sha256_json(value), json.dumps(value, sort_keys=True))
    return out


def log_dataset_inputs(client: mlflow.MlflowClient, run_id: str, workdir: Path, eval_dataset_id: str | None) -> None:
    """Each dataset as an MLflow dataset input (context train or eval) with its content digest.

    MLflow's digest column holds 36 characters: it gets the digest's head, the full SHA-256 is in
    the dataset's profile and in the `kontext.data.*` run tags.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    existing = {d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs}
    inputs = []
    for dataset_id, (digest, source) in sorted(dataset_digests(workdir).items()):
        if dataset_id in existing:
            continue
        dataset = Dataset(
            name=dataset_id,
            digest=digest[:36],
            source_type="local" if source == "local" else "hugging_face",
            source=json.dumps({"dataset_id": dataset_id, "source": source}),
            profile=json.dumps({"sha256": digest}),
        )
        context = "eval" if dataset_id == eval_dataset_id else "train"
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def log_run_files(client: mlflow.MlflowClient, run_id: str, workdir: Path, params: Params) -> None:
    """The resolved params, the pre-flight report and the loss plot (CSV and PNG) as run artifacts."""
    import tempfile

    import yaml

    from kontext_core.tracking.loss_plot import render_loss_plot

    workdir = Path(workdir)
    with tempfile.TemporaryDirectory(prefix="kontext-run-files-") as tmp:
        resolved = Path(tmp) / "params.resolved.yaml"
        resolved.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        client.log_artifact(run_id, str(resolved), artifact_path="config")
        for name in ("report.md", "report.json"):
            if (workdir / "data/pair" / name).exists():
                client.log_artifact(run_id, str(workdir / "data/pair" / name), artifact_path="preflight")
        csv = workdir / "artifacts/plots/train_loss.csv"
        if csv.exists():
            log_loss_curve(client, run_id, csv)
            client.log_artifact(run_id, str(csv), artifact_path="plots")
            png = Path(tmp) / "train_loss.png"
            render_loss_plot(csv, png)
            client.log_artifact(run_id, str(png), artifact_path="plots")


def log_loss_curve(client: mlflow.MlflowClient, run_id: str, csv: Path) -> bool:
    """`train/loss` from the loss CSV onto a run that has none: the run a version is registered from
    when its train stage was skipped (it ran in an earlier, interrupted run, whose MLflow run keeps the
    live curve). Returns whether it logged."""
    import time

    from mlflow.entities import Metric

    if client.get_metric_history(run_id, "train/loss"):
        return False
    rows = [line.split(",") for line in Path(csv).read_text().splitlines()[1:] if line.strip()]
    now = int(time.time() * 1000)
    metrics = [Metric("train/loss", float(row[1]), now, int(row[0])) for row in rows]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    return bool(metrics)


def dvc_tags(workdir: Path) -> dict[str, str]:
    """The DVC lock's hash when the project is a DVC pipeline (what `dvc repro` had recorded so far)."""
    from kontext_core.fsutil import sha256_file

    lock = Path(workdir) / "dvc.lock"
    return {"kontext.dvc.lock_sha256": sha256_file(lock)} if lock.exists() else {}
