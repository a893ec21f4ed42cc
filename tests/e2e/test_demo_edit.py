"""The demo's own params and data: the pretrained tiny base copies, the LoRA learns the inversion.

One run of every stage per module (minutes on two cores), shared by the tests below.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from kontext_core.stages import STAGE_ORDER, VALIDATE_METRICS, read_manifest, run_stage
from kontext_core.validate.metrics import psnr
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

COLUMNS = ("reference", "base", "lora", "target")
LABEL_HEIGHT = 12  # kontext_core.validate.grids.make_grid's default


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory, mlflow_template) -> Path:
    """The demo's params.yaml unchanged (only the MLflow store moved into the copy)."""
    project = tmp_path_factory.mktemp("demo")
    shutil.copytree(ROOT / "config", project / "config")
    shutil.copy(mlflow_template, project / "mlflow.db")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["mlflow"]["tracking_uri"] = f"sqlite:///{project / 'mlflow.db'}"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in STAGE_ORDER:
        run_stage(name, project / "params.yaml")
    return project


def _grid_columns(path: Path) -> dict[str, Image.Image]:
    grid = Image.open(path).convert("RGB")
    width = grid.width // len(COLUMNS)
    return {
        name: grid.crop((i * width, LABEL_HEIGHT, (i + 1) * width, grid.height)) for i, name in enumerate(COLUMNS)
    }


# Not met yet: the pretrained VAE plateaus near 14 dB, so base and LoRA both return colour blurs
# (measured: base 11.01 dB, LoRA 11.48 dB). Strict: the day it passes, drop the marker.
NOT_YET = pytest.mark.xfail(strict=True, reason="tiny VAE reconstructs at ~14 dB; issue 17 goal not reached")


@NOT_YET
def test_lora_beats_the_base_by_three_db_on_the_demo_eval_pairs(demo_project):
    metrics = json.loads((demo_project / VALIDATE_METRICS).read_text())
    assert metrics["psnr"] >= metrics["psnr_base"] + 3.0, metrics


@NOT_YET
def test_grids_show_base_near_reference_and_lora_near_target(demo_project):
    grids = sorted((demo_project / "artifacts/validate/grids").glob("*.png"))
    assert grids
    for path in grids:
        col = _grid_columns(path)
        assert psnr(col["base"], col["reference"]) > psnr(col["base"], col["target"]), path.name
        assert psnr(col["lora"], col["target"]) > psnr(col["lora"], col["reference"]), path.name


def test_pretraining_made_the_base_reconstruct_and_copy(demo_project):
    report = read_manifest(demo_project, "init")["info"]["pretrain"]
    # The untrained tiny VAE reconstructs the held-out pictures at about 11 dB.
    assert report["vae_psnr_held_out"] > 13.0, report
    assert report["identity_psnr_held_out"] > 11.5, report
    stats = report["latent_stats"]
    assert abs(stats["mean"]) < 0.25 and 0.6 < stats["std"] < 1.4, stats


def test_demo_grids_are_not_constant_pictures(demo_project):
    for path in (demo_project / "artifacts/validate/grids").glob("*.png"):
        lora = np.asarray(_grid_columns(path)["lora"], dtype=np.float64)
        assert lora.std() > 10.0, path.name
