"""The whole pipeline by hub id, offline, from a replica of FLUX.1 Kontext [dev] in a hub cache.

`pretrained_model_name_or_path: black-forest-labs/FLUX.1-Kontext-dev` and a dataset entry naming
`Yuanshi/Subjects200K` resolve through huggingface_hub's own cache resolution (HF_HOME, refs/main,
snapshots/<commit>) with HF_HUB_OFFLINE=1, as on a user's machine after a download. Every stage
runs; then a second snapshot is written and refs/main moved to it, and exactly the stages that
read the model run again. The stages run in a child process started with HF_HOME set, because
huggingface_hub and diffusers read HF_HOME once, when first imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kontext_core.data.subjects_replica import SUBJECTS_REPO, write_subjects_hub_cache
from kontext_core.model.replica import REPO_ID, write_hub_cache
from tests.conftest import ROOT, make_project

pytestmark = pytest.mark.slow

# The stages whose inputs include the base model (model_inputs / quantize_inputs), and the ones
# downstream of their outputs: nothing else may run when refs/main moves.
MODEL_READERS = {"cache_vae", "cache_text", "quantize", "train", "validate", "register"}

DRIVER = """
import json, sys
from kontext_core.stages import STAGE_ORDER, run_stage
ran = [name for name in STAGE_ORDER if not run_stage(name, sys.argv[1])["skipped"]]
print("RAN " + json.dumps(ran))
"""


def _run_all(params_file: Path, hf_home: Path) -> list[str]:
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_DATASETS_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(params_file)],
        cwd=params_file.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = [row for row in done.stdout.splitlines() if row.startswith("RAN ")][-1]
    return json.loads(line.removeprefix("RAN "))


def _manifest(project: Path, stage: str) -> dict:
    return json.loads((project / "artifacts/manifests" / f"{stage}.json").read_text())


def _hub_dataset_file(project: Path) -> None:
    """The shipped dataset file, its Subjects200K entries naming the hub id instead of the local copy."""
    entries = json.loads((ROOT / "config/multidatabackend.json").read_text())
    named = 0
    for entry in entries:
        if entry.get("dataset_name") == "data/samples/subjects200k":
            entry["dataset_name"] = SUBJECTS_REPO
            named += 1
    assert named, "the shipped dataset file no longer has the Subjects200K entries this test renames"
    (project / "config/multidatabackend.json").write_text(json.dumps(entries, indent=2))


def test_every_stage_by_hub_id_offline_and_moving_main_reruns_exactly_the_model_readers(tmp_path, mlflow_db):
    import mlflow

    hf_home = tmp_path / "hf"
    first = write_hub_cache(hf_home, seed=0)
    data_commit = write_subjects_hub_cache(hf_home, count=4, size=64)
    project = tmp_path / "project"
    params_file = make_project(project, mlflow_db=mlflow_db, pretrained_model_name_or_path=REPO_ID)
    _hub_dataset_file(project)

    assert _run_all(params_file, hf_home) == [
        "init", "fetch", "pair", "degrade", "cache_vae", "cache_text", "quantize", "train", "validate", "register",
    ]  # fmt: skip
    # init made the sample data but no tiny model: the params name a hub id.
    assert (project / "models/tiny-kontext/NOT_BUILT.txt").exists()
    assert not (project / "models/tiny-kontext/model_index.json").exists()
    for stage in ("cache_vae", "cache_text", "quantize", "validate"):
        assert _manifest(project, stage)["inputs"]["base_model"] == {"hub_id": REPO_ID, "commit": first}
    assert _manifest(project, "fetch")["inputs"]["dataset:subjects-scene"]["commit"] == data_commit
    records = (project / "data/fetch/records.jsonl").read_text()
    assert SUBJECTS_REPO in records

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
    registration = json.loads((project / "artifacts/register/registration.json").read_text())
    version = client.get_model_version(registration["model_name"], registration["version"])
    assert json.loads(version.tags["kontext.base_model"]) == {"hub_id": REPO_ID, "commit": first}
    run = client.get_run(registration["run_id"])
    assert json.loads(run.data.tags["kontext.base_model"])["commit"] == first

    # Another snapshot of the same id; refs/main now names it.
    second = write_hub_cache(hf_home, seed=1)
    assert second != first
    ran = _run_all(params_file, hf_home)
    assert set(ran) == MODEL_READERS, ran
    assert _manifest(project, "quantize")["inputs"]["base_model"]["commit"] == second
    registration = json.loads((project / "artifacts/register/registration.json").read_text())
    version = client.get_model_version(registration["model_name"], registration["version"])
    assert json.loads(version.tags["kontext.base_model"])["commit"] == second

    # Nothing moved: nothing runs.
    assert _run_all(params_file, hf_home) == []


def test_reproduce_rebuilds_the_recorded_commit_after_main_moved(tmp_path, mlflow_template, monkeypatch):
    """The version names the commit, not `main`: moved on since, the rebuild still reads the
    snapshot the version was trained on, and the adapter is the same bytes."""
    import shutil
    import subprocess as sp

    from typer.testing import CliRunner

    from flows.cli import app

    hf_home = tmp_path / "hf"
    first = write_hub_cache(hf_home, seed=0)
    write_subjects_hub_cache(hf_home, count=4, size=64)
    project = tmp_path / "repo"
    params_file = make_project(project, pretrained_model_name_or_path=REPO_ID)  # relative sqlite:///mlflow.db
    _hub_dataset_file(project)
    for name in ("kontext_core", "pyproject.toml", ".gitignore"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, project / name)
    shutil.copy(mlflow_template, project / "mlflow.db")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "project"]):
        sp.run([*git, *args], cwd=project, check=True, capture_output=True)
    assert "register" in _run_all(params_file, hf_home)

    assert write_hub_cache(hf_home, seed=1) != first  # main moves on
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    result = CliRunner().invoke(
        app,
        ["reproduce", "models:/kontext-lora@champion", "--params", str(params_file), "--workdir", str(tmp_path / "w")],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("models:/kontext-lora@champion: identical\n"), result.output
    rebuilt = json.loads((tmp_path / "w" / "artifacts/manifests/quantize.json").read_text())
    assert rebuilt["inputs"]["base_model"]["commit"] == first
