"""What the registry and the MLflow run say about a registered adapter: its lineage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException


class CannotReproduce(Exception):
    """A reason why no rebuild can answer "identical" or "different" (the third answer)."""


@dataclass
class Recorded:
    uri: str
    run_id: str
    tags: dict[str, str]
    params: dict[str, str]
    model_name: str | None = None
    version: str | None = None

    @property
    def commit(self) -> str:
        return self.tags.get("git.commit", "unknown")

    def fingerprint(self, stage: str) -> str | None:
        return self.tags.get(f"kontext.fingerprint.{stage}")

    def data_digests(self) -> dict[str, str]:
        prefix = "kontext.data."
        return {key[len(prefix) :]: value for key, value in self.tags.items() if key.startswith(prefix)}


def read_lineage(uri: str, client: mlflow.MlflowClient) -> Recorded:
    """The version's run (tags and flattened params) for models:/name@alias, models:/name/N or runs:/ID."""
    name = version = None
    try:
        if uri.startswith("models:/"):
            rest = uri[len("models:/") :]
            if "@" in rest:
                name, alias = rest.split("@", 1)
                model_version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = rest.partition("/")
                model_version = client.get_model_version(name, number)
            version = str(model_version.version)
            run_id = model_version.run_id or model_version.tags.get("run_id", "")
        elif uri.startswith("runs:/"):
            run_id = uri[len("runs:/") :].split("/")[0]
        else:
            raise CannotReproduce(f"{uri}: not a models:/ or runs:/ URI")
        if not run_id:
            raise CannotReproduce(f"{uri}: the version names no MLflow run, so it has no lineage")
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise CannotReproduce(f"{uri}: not found in the registry ({exc.message})") from exc
    from kontext_core.reproduce.params import pipeline_params

    return Recorded(uri, run_id, dict(run.data.tags), pipeline_params(dict(run.data.params)), name, version)


def registered_adapter(recorded: Recorded) -> Path:
    """The registered adapter folder, downloaded from the artifact store."""
    uri = recorded.uri
    if uri.startswith("runs:/") and uri.rstrip("/").count("/") == 1:
        uri = f"runs:/{recorded.run_id}/adapter"  # the name register_adapter logs under
    import tempfile

    from kontext_core.tracking.artifact_check import ArtifactMismatch
    from kontext_core.tracking.registry import download_adapter

    try:
        return download_adapter(uri, Path(tempfile.mkdtemp(prefix="kontext-reproduce-adapter-")))
    except ArtifactMismatch as exc:
        raise CannotReproduce(str(exc)) from exc
    except (MlflowException, OSError) as exc:
        raise CannotReproduce(f"the registered adapter of {recorded.uri} cannot be read: {exc}") from exc
