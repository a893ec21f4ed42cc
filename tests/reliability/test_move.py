"""Moving or copying a project keeps everything loadable: every stage is still up to date, the champion
loads from the project's own `mlruns`, and no hashed output holds an absolute path of where it was."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import mlflow
import pytest

from kontext_core.config import load_params
from kontext_core.stages import STAGE_ORDER, run_stage
from kontext_core.stages.engine import read_manifest
from kontext_core.tracking.registry import download_adapter
from kontext_core.tracking.runs import open_store

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_a_moved_project_is_up_to_date_and_its_champion_loads(reliable_built, project_copy, tmp_path):
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(project_copy, moved)  # the copy's first home is gone: a move

    assert all(run_stage(name, moved / "params.yaml")["skipped"] for name in STAGE_ORDER)

    experiment = open_store(load_params(moved / "params.yaml"), moved)
    assert experiment is not None
    # Followed the project: new runs write into the project's own mlruns, not the original's.
    assert mlflow.get_experiment(experiment.experiment_id).artifact_location == (moved / "mlruns").as_uri()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = download_adapter("models:/kontext-lora@champion", Path(tmp))
        assert (adapter / "pytorch_lora_weights.safetensors").exists()


def test_no_hashed_output_holds_an_absolute_path_of_the_project(reliable_built):
    where = str(reliable_built).encode()
    found = []
    for name in STAGE_ORDER:
        for rel, files in read_manifest(reliable_built, name)["files"].items():
            for sub in files:
                path = reliable_built / rel if sub == "." else reliable_built / rel / sub
                if where in path.read_bytes():
                    found.append(path.relative_to(reliable_built).as_posix())
    assert found == []


def test_no_secret_of_the_environment_lands_in_any_file_of_the_project(reliable_built):
    from tests.reliability.conftest import SECRETS

    found = [
        path.relative_to(reliable_built).as_posix()
        for path in reliable_built.rglob("*")
        if path.is_file() and any(value.encode() in path.read_bytes() for value in SECRETS.values())
    ]
    assert found == []


def test_two_projects_sharing_a_registry_make_one_version_per_adapter(reliable_built, tmp_path, mlflow_template):
    """Two machines (here: two runs) registering the same adapter bytes into one store: one version."""
    from kontext_core.data.sources import open_ref
    from kontext_core.tracking.model_log import log_edit_model
    from kontext_core.tracking.registry import register_adapter
    from kontext_core.tracking.store import use_store
    from kontext_core.validate.promotion import example_from_eval_set

    shared = tmp_path / "shared.db"
    shutil.copy(mlflow_template, shared)
    use_store(f"sqlite:///{shared}")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("shared", artifact_location=(tmp_path / "artifacts").as_uri())
    project = reliable_built
    params = load_params(project / "params.yaml")
    adapter = project / "models/adapter"
    metrics = json.loads((project / "artifacts/metrics/validate.json").read_text())
    example = example_from_eval_set(project, params, lambda ref: open_ref(ref, project))
    logged: list[str] = []

    def register(run_id: str):
        def log_model():
            logged.append(run_id)
            return log_edit_model(params, run_id, adapter, project, example)

        def rescore(_: Path) -> dict[str, float]:
            raise AssertionError("the same adapter is never scored against itself")

        return register_adapter(params, run_id, adapter, log_model, metrics, "same-eval-set", rescore)

    first = register(client.create_run(experiment).info.run_id)
    second = register(client.create_run(experiment).info.run_id)
    assert second.version == first.version and len(logged) == 1
    assert len(client.search_model_versions("name = 'kontext-lora'")) == 1
    assert str(client.get_model_version_by_alias("kontext-lora", "champion").version) == first.version
