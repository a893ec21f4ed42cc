"""kill -9 at the worst moment: each stage killed after writing its outputs and before swapping them in
(KONTEXT_TEST_KILL_AT), then the pipeline run again: it ends clean (nothing left behind, nothing damaged,
no MLflow run left RUNNING, one registered version), with the same outputs."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from kontext_core.lifecycle import KILL_ENV, leftovers
from kontext_core.stages import STAGE_ORDER, STAGES, manifest_path, run_stage
from kontext_core.stages.engine import read_manifest
from kontext_core.stages.verify import verify_project
from tests.forked import run_stage_forked

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

# Outputs that name the MLflow run that made them: a rerun makes another run, so they differ.
RUN_NAMING = {"artifacts/train", "artifacts/register"}


def _client(project: Path) -> mlflow.MlflowClient:
    # registry_uri too: otherwise the registry is whatever store this process last pointed mlflow at.
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _run_statuses(project: Path) -> list[str]:
    client = _client(project)
    return [r.info.status for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def _kill_during(project: Path, stage: str, point: str) -> None:
    code, output = run_stage_forked(project, stage, env={KILL_ENV: f"{stage}:{point}"})
    assert code == -9, output[-3000:]


def _run_all(project: Path) -> set[str]:
    return {name for name in STAGE_ORDER if not run_stage(name, project / "params.yaml")["skipped"]}


@pytest.mark.parametrize("stage", STAGE_ORDER)
def test_a_stage_killed_before_its_outputs_are_swapped_in_recovers_clean(project_copy, stage):
    project = project_copy
    before = read_manifest(project, stage)["outputs"]
    manifest_path(project, stage).unlink()  # so that the killed run (and the rerun) really run it
    _kill_during(project, stage, "before_swap")
    if STAGES[stage].outs:
        assert leftovers(project), "the killed run should have left its staging folders behind"

    assert stage in _run_all(project)
    assert leftovers(project) == []
    assert verify_project(project) == {name: [] for name in STAGE_ORDER}
    after = read_manifest(project, stage)["outputs"]
    assert {k: v for k, v in after.items() if k not in RUN_NAMING} == {
        k: v for k, v in before.items() if k not in RUN_NAMING
    }
    assert "RUNNING" not in _run_statuses(project)
    assert len(_client(project).search_model_versions("name = 'kontext-lora'")) == 1


def test_register_killed_between_version_and_alias_completes_on_the_next_run(project_copy):
    project = project_copy
    client = _client(project)
    client.delete_registered_model("kontext-lora")
    manifest_path(project, "register").unlink()
    _kill_during(project, "register", "version_created")
    versions = client.search_model_versions("name = 'kontext-lora'")
    assert len(versions) == 1 and versions[0].tags["kontext.decision"] == "promoted"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("kontext-lora", "champion")  # the alias moves last

    assert _run_all(project) == {"register"}
    assert len(client.search_model_versions("name = 'kontext-lora'")) == 1
    assert client.get_model_version_by_alias("kontext-lora", "champion").version == versions[0].version
    assert "RUNNING" not in _run_statuses(project)


def test_a_half_made_version_is_removed_and_registered_properly(project_copy):
    """A version without its decision tags (what the old non-atomic register left when killed)."""
    project = project_copy
    client = _client(project)
    champion = client.get_model_version_by_alias("kontext-lora", "champion")
    client.delete_model_version_tag("kontext-lora", champion.version, "kontext.decision")
    manifest_path(project, "register").unlink()

    assert _run_all(project) == {"register"}
    versions = client.search_model_versions("name = 'kontext-lora'")
    assert len(versions) == 1 and versions[0].version != champion.version
    assert versions[0].tags["kontext.decision"] == "promoted"
    assert client.get_model_version_by_alias("kontext-lora", "champion").version == versions[0].version
