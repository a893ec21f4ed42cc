"""The demo as shipped (params.yaml and config/ unchanged): the pretrained tiny base returns its
reference, and the demo's adapter learns the sample edit (colour inversion) on it, by a margin the
validation metrics and the registry see."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from kontext_core.stages import STAGE_ORDER, run_stage
from kontext_core.stages.validate import VALIDATE_METRICS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory, mlflow_template, demo_init) -> Path:
    """Every stage run once on the demo's own parameters; only the MLflow store is the test's. The
    init outputs are the session's (same parameters), copied in: init verifies them and skips."""
    project = tmp_path_factory.mktemp("demo")
    shutil.copytree(ROOT / "config", project / "config")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    shutil.copy(mlflow_template, project / "mlflow.db")
    params["mlflow"]["tracking_uri"] = f"sqlite:///{project / 'mlflow.db'}"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    demo_init(project)
    for name in STAGE_ORDER:
        manifest = run_stage(name, project / "params.yaml")
        assert not manifest["skipped"] or name == "init", name
        assert manifest["skipped"] or name != "init", "the copied init outputs were not taken"
    return project


def _manifest_info(project: Path, stage: str) -> dict:
    return json.loads((project / "artifacts" / "manifests" / f"{stage}.json").read_text())["info"]


def test_the_pretrained_base_copies_its_reference(demo_project):
    report = _manifest_info(demo_project, "init")["pretrain"]
    # The VAE alone bounds every picture; the base's identity edit comes close to that bound.
    assert report["vae_psnr_held_out"] > 20.0, report
    assert report["identity_psnr_held_out"] > 17.0, report
    assert report["identity_psnr_held_out"] > report["vae_psnr_held_out"] - 4.0, report


def test_the_demo_adapter_learns_the_edit_by_3_db(demo_project):
    metrics = json.loads((demo_project / VALIDATE_METRICS).read_text())
    assert metrics["psnr"] >= metrics["psnr_base"] + 3.0, metrics
    assert metrics["eval_loss"] < metrics["eval_loss_base"], metrics
    register = _manifest_info(demo_project, "register")
    assert register["decision"] == "promoted" and register["became_champion"] is True, register
