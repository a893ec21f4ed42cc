"""One project on which every stage has run, built once per session; each test works on a copy.

The project keeps the default, project-relative MLflow store (`sqlite:///mlflow.db`, `mlruns/`), so a
copy is a separate project with its own registry: what a user gets with `cp -r`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_project
from tests.s3.conftest import s3_server  # noqa: F401  (a real S3 API server on loopback, for aws entries)

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "kontext-test-aws-secret-9f3b",
    "HF_TOKEN": "hf_kontextTestToken7c21",
    "MLFLOW_TRACKING_PASSWORD": "kontext-test-mlflow-pw-51de",
}


@pytest.fixture(scope="session")
def reliable_built(tmp_path_factory, mlflow_template) -> Path:
    from kontext_core.stages import STAGE_ORDER, run_stage

    project = tmp_path_factory.mktemp("reliable") / "project"
    params_file = make_project(project, shared_init=True)
    shutil.copy(mlflow_template, project / "mlflow.db")
    # Secrets a user's environment holds: none may end up in any file of the project (test_move).
    saved = {key: os.environ.get(key) for key in SECRETS}
    os.environ.update(SECRETS)
    try:
        for name in STAGE_ORDER:
            run_stage(name, params_file)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return project


@pytest.fixture
def project_copy(reliable_built, tmp_path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(reliable_built, dest, symlinks=True)
    return dest
