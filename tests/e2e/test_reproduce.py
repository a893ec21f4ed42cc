"""`kontext reproduce`: a committed project's registered version rebuilt from its lineage.

A real git repository holding the project's code and config, the stages run as `dvc repro` runs
them, a real MLflow store and registry; the rebuild runs the committed code in a child process.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.stages import STAGE_ORDER, run_stage
from kontext_core.tracking.runs import use_store
from tests.conftest import ROOT, make_project, write_params

pytestmark = pytest.mark.slow

# What the commit must hold for its own code to rebuild the adapter.
CODE = ["kontext_core", "pyproject.toml", ".gitignore"]


def _git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory, mlflow_template) -> Path:
    """A git repository with the project committed and the pipeline run once from the clean tree."""
    project = tmp_path_factory.mktemp("reproduce") / "repo"
    params_file = make_project(project, shared_init=True)  # relative sqlite:///mlflow.db, git-ignored
    for name in CODE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, project / name)
    shutil.copy(mlflow_template, project / "mlflow.db")
    _git(project, "init", "-q")
    _git(project, "add", ".")
    _git(project, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project")
    for name in STAGE_ORDER:
        run_stage(name, params_file)
    return project


def _version_tag(project: Path, version: str, key: str) -> str:
    use_store(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.MlflowClient().get_model_version("kontext-lora", version).tags[key]


def _reproduce(project: Path, uri: str, workdir: Path):
    result = CliRunner().invoke(
        app, ["reproduce", uri, "--params", str(project / "params.yaml"), "--workdir", str(workdir)]
    )
    print(result.output)
    return result


def test_champion_rebuilt_from_the_commit_is_identical(project, tmp_path_factory):
    workdir = tmp_path_factory.getbasetemp() / "reproduce-workdir"
    result = _reproduce(project, "models:/kontext-lora@champion", workdir)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("models:/kontext-lora@champion: identical\n")
    assert "rebuilt: fetch, pair, degrade, cache_vae, cache_text, quantize, train" in result.output
    assert _version_tag(project, "1", "kontext.reproduce") == "identical"
    # The recorded run says what reproduction needs.
    run = mlflow.get_run(mlflow.MlflowClient().get_model_version("kontext-lora", "1").run_id)
    assert run.data.tags["kontext.device"] == "cpu"
    assert run.data.tags["kontext.env.torch"] and run.data.tags["git.dirty"] == "false"


def test_one_changed_byte_of_a_training_image_is_named(project, tmp_path_factory):
    image_path = sorted((project / "data/samples/pairs/edited").glob("*.png"))[0]
    original = image_path.read_bytes()
    pixels = np.array(Image.open(image_path))
    pixels[0, 0, 0] ^= 1  # one byte of the image
    Image.fromarray(pixels).save(image_path)
    try:
        workdir = tmp_path_factory.getbasetemp() / "reproduce-workdir"
        result = _reproduce(project, "models:/kontext-lora@champion", workdir)
    finally:
        image_path.write_bytes(original)
    assert result.exit_code == 1, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("models:/kontext-lora@champion: different (dataset 'pairs-edited': digest "), first
    assert "max abs tensor difference" in result.output
    assert _version_tag(project, "1", "kontext.reproduce") == "different"
    assert "pairs-edited" in _version_tag(project, "1", "kontext.reproduce.reason")


def test_a_version_trained_from_a_dirty_tree_cannot_be_reproduced(project, prefect_harness):
    from prefect.client.orchestration import get_client

    from flows.reproduce_flow import kontext_reproduce

    params_file = project / "params.yaml"
    committed = params_file.read_text()
    write_params(params_file, learning_rate=0.002)
    try:
        for name in STAGE_ORDER:
            run_stage(name, params_file)
    finally:
        params_file.write_text(committed)
    state = kontext_reproduce(model_uri="models:/kontext-lora/2", params_file=str(params_file), return_state=True)
    answer = state.result()
    assert answer["answer"] == "cannot reproduce"
    assert answer["reason"].startswith("trained from a dirty tree at ")
    assert "M params.yaml" in answer["reason"]
    assert _version_tag(project, "2", "kontext.reproduce") == "cannot reproduce"

    async def artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    published = [a for a in asyncio.run(artifact()) if a.key == "kontext-reproduce"]
    assert published and "cannot reproduce" in published[0].data
