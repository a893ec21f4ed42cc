"""SimpleTuner's own Kontext example config.json runs every stage (one value changed, for CPU time).

The project holds the file as SimpleTuner ships it (config/examples/simpletuner/) at its root, with
one value changed (validation_resolution 64x128 instead of 512x512, for CI's two cores), and at the
path its `data_backend_config` names, the quick-start's two-folder dataset file (paths pointed at the
sample data `init` writes). Nothing else is set: the run uses the example's own 100 steps,
optimi-lion, bf16 (float32 on a CPU), checkpoints every 50 steps and hub_model_id; the dataset file is
the quick-start's with 64 px buckets instead of 1024 px, for CI's two cores.
"""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from kontext_core.config import load_params
from kontext_core.stages import STAGE_ORDER, run_stage
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "config/examples/simpletuner/kontext.peft-lora.config.json"


def test_simpletuners_kontext_example_runs_every_stage(tmp_path, mlflow_template):
    project = tmp_path / "project"
    project.mkdir()
    # SimpleTuner's file with one value changed: its validation_resolution 512x512, which this pipeline
    # acts on, costs about 20 s per denoising step with the tiny model on a CPU; 64x128 (the buckets
    # are 64x64) still shows that the edits render at validation_resolution.
    config = json.loads(EXAMPLE.read_text())
    assert config["validation_resolution"] == "512x512"
    config["validation_resolution"] = "64x128"
    (project / "config.json").write_text(json.dumps(config))
    dataset_file = project / json.loads(EXAMPLE.read_text())["data_backend_config"]
    dataset_file.parent.mkdir(parents=True)
    # The quick-start's dataset file, with one change so that 100 steps fit CI's two cores: 64 px
    # buckets instead of 1024 px.
    entries = json.loads((ROOT / "config/examples/kontext-two-folder.json").read_text())
    for entry in entries:
        if entry.get("dataset_type") != "text_embeds":
            entry["resolution"] = 64
    dataset_file.write_text(json.dumps(entries))
    shutil.copy(mlflow_template, project / "mlflow.db")  # the default tracking_uri, sqlite:///mlflow.db
    params_file = project / "config.json"

    for name in STAGE_ORDER:
        run_stage(name, params_file)

    params = load_params(params_file)
    pairs = json.loads((project / "data/pair/pairs.json").read_text())
    assert pairs and {tuple(p["size"]) for p in pairs} == {(64, 64)}  # the dataset's resolution, pixel_area
    metrics = json.loads((project / "artifacts/metrics/train.json").read_text())
    assert metrics["steps"] == params.max_train_steps == 100
    registration = json.loads((project / "artifacts/register/registration.json").read_text())
    assert registration["model_name"] == "flux-kontext-test-lora"  # hub_model_id, mapped
    assert list((project / "models/checkpoints").glob("*/checkpoint-50"))  # checkpoint_step_interval
    # validation_resolution is acted on: every edit renders at 64x128 (the reference column keeps its
    # 64x64 bucket), so each grid is 128 px tall plus its label row, and 4 columns of 64 px wide.
    grids = sorted((project / "artifacts/validate/grids").rglob("*.png"))
    assert grids and {Image.open(grid).size for grid in grids} == {(4 * 64, 128 + 12)}
    assert params.validation_size == (64, 128)
