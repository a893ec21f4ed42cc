"""The training loop's MLflow logger: batched background writes lose nothing and keep step order."""

from __future__ import annotations

import mlflow
import pytest

from kontext_core.train.run import BatchedMetricLogger


def test_batched_logger_writes_every_step_in_order(mlflow_db):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
    run_id = client.create_run(client.create_experiment("metrics")).info.run_id
    logger = BatchedMetricLogger(client, run_id, interval=0.01)
    for step in range(1500):  # more than one log_batch call holds (1,000 metrics)
        logger(step, {"train/loss": 1.0 / (step + 1), "train/lr": 1e-4})
    logger.close()
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1500))
    assert {m.step: m.value for m in history}[9] == pytest.approx(0.1)
    assert len(client.get_metric_history(run_id, "train/lr")) == 1500


def test_a_failed_write_is_raised_by_close(mlflow_db):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
    logger = BatchedMetricLogger(client, "no-such-run", interval=0.01)
    logger(0, {"train/loss": 1.0})
    with pytest.raises(mlflow.exceptions.MlflowException):
        logger.close()
