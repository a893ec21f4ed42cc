"""Moving or copying a project keeps everything loadable: every stage is still up to date, the champion
loads from the project's own `mlruns`, and no hashed output holds an absolute path of where it was."""

from __future__ import annotations

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
