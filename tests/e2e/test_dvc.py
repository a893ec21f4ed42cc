"""`dvc repro` on a copy of the project runs the same stages; a second repro is a no-op."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kontext_core.dvc_yaml import render
from kontext_core.stages import STAGE_ORDER
from tests.conftest import ROOT, make_project

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


def test_dvc_repro_runs_every_stage_then_is_up_to_date(tmp_path, mlflow_template):
    project = tmp_path / "clone"
    make_project(project)
    shutil.copy(mlflow_template, project / "mlflow.db")
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    shutil.copytree(ROOT / "kontext_core", project / "kontext_core", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    assert _dvc(project, "init", "-q").returncode == 0

    first = _dvc(project, "repro")
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
