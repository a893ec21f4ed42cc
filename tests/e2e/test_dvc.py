"""`dvc repro` on a copy of the project runs the same stages; a second repro is a no-op."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kontext_core.dvc_yaml import render
from kontext_core.stages import STAGE_ORDER
from tests.conftest import ROOT, make_project, write_params

pytestmark = pytest.mark.slow


def test_dvc_yaml_is_generated_from_the_stage_registry():
    assert (ROOT / "dvc.yaml").read_text() == render(), "run `kontext dvc-yaml`"


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, mlflow_template) -> tuple[Path, subprocess.CompletedProcess]:
    """A copy of the project on which `dvc repro` has run once."""
    project = tmp_path_factory.mktemp("dvc") / "clone"
    make_project(project)
    shutil.copy(mlflow_template, project / "mlflow.db")
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    shutil.copytree(ROOT / "kontext_core", project / "kontext_core", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    assert _dvc(project, "init", "-q").returncode == 0
    return project, _dvc(project, "repro")


def test_dvc_repro_runs_every_stage_then_is_up_to_date(reproduced):
    project, first = reproduced
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for name in STAGE_ORDER:
        assert f"Running stage '{name}'" in first.stdout
    lock = (project / "dvc.lock").read_text()
    assert all(f"  {name}:" in lock for name in STAGE_ORDER)
    assert (project / "models/adapter/pytorch_lora_weights.safetensors").exists()

    second = _dvc(project, "repro")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout.lower()

    metrics = _dvc(project, "metrics", "show", "--json")
    assert metrics.returncode == 0, metrics.stderr
    shown = json.loads(metrics.stdout)
    assert "psnr" in json.dumps(shown)


def _stage_process(project: Path, stage: str) -> psutil.Process | None:
    """The `kontext stage NAME` process that DVC started in `project`."""
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = proc.info["cmdline"] or []
        if "stage" in cmdline and stage in cmdline and proc.info["cwd"] == str(project):
            return proc
    return None


def test_a_killed_train_stage_leaves_no_running_mlflow_run_after_the_next_repro(reproduced):
    import mlflow

    project, _ = reproduced
    write_params(project / "params.yaml", learning_rate=0.002, max_train_steps=400)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    repro = subprocess.Popen(
        [str(Path(sys.executable).parent / "dvc"), "repro"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    open_runs = project / "artifacts/mlflow/open_runs.json"
    deadline = time.monotonic() + 300
    train = None
    # Kill once the stage has opened its MLflow run (the run that would otherwise stay RUNNING).
    while repro.poll() is None and time.monotonic() < deadline:
        train = train or _stage_process(project, "train")
        if train is not None and open_runs.exists() and json.loads(open_runs.read_text()):
            break
        time.sleep(0.05)
    assert train is not None, "dvc repro did not start the train stage"
    killed_run = json.loads(open_runs.read_text())[-1]
    train.send_signal(signal.SIGKILL)
    assert repro.wait(timeout=120) != 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert client.get_run(killed_run).info.status == "RUNNING"

    write_params(project / "params.yaml", max_train_steps=6)
    again = _dvc(project, "repro")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    killed = client.get_run(killed_run)
    assert killed.info.status == "FAILED"
    assert "abandoned" in killed.data.tags["kontext.failure"]
    runs = client.search_runs([r.experiment_id for r in client.search_experiments()])
    assert runs and not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
