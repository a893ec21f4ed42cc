"""Validation during training (SimpleTuner's validation_steps): PSNR, grids and the eval loss by step
in the training run, so the loss curve and the samples line up."""

from __future__ import annotations

import json

import mlflow

from kontext_core.stages import run_stage
from tests.conftest import write_params
from tests.integration.test_extension_points import _copy_project


def test_validation_steps_log_eval_loss_psnr_and_grids_by_step(built_project, tmp_path):
    params_file = _copy_project(built_project, tmp_path / "p")
    write_params(params_file, validation_step_interval=2, num_eval_images=1, max_train_steps=4)
    assert not run_stage("train", params_file)["skipped"]
    run_id = json.loads((tmp_path / "p/artifacts/train/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'p/mlflow.db'}")
    for key in ("val/eval_loss", "val/psnr"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [2, 4], key
    losses = [m.value for m in client.get_metric_history(run_id, "val/eval_loss")]
    assert all(value > 0 for value in losses) and losses[0] != losses[1]  # the adapter moved between them
    grids = [a.path for a in client.list_artifacts(run_id, "validation")]
    assert {"validation/step_000002", "validation/step_000004"} <= set(grids)
