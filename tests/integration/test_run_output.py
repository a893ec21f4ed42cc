"""What a user sees from `kontext run` when its output is not a terminal: bounded progress lines for
every long stage, and a closing summary with every stage, its status and seconds, the loss, the
validation metric and the champion decision. A run with every stage up to date starts no Prefect flow
run and no MLflow run (counted in the real stores); a changed setting takes the flow again."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.progress import MAX_LINES_PER_BAR, MODE_ENV
from kontext_core.stages import STAGE_ORDER
from tests.conftest import make_project

pytestmark = pytest.mark.slow

PROGRESS_LINE = re.compile(r"^(?P<desc>[a-z_][\w -]*): +(?P<percent>\d+)% (?P<n>\d+)/(?P<total>\d+) ")


def _progress(stderr: str) -> Counter:
    return Counter(m["desc"] for line in stderr.splitlines() if (m := PROGRESS_LINE.match(line)))


def _stage_rows(stdout: str) -> dict[str, tuple[str, float]]:
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in STAGE_ORDER and parts[1] in ("ran", "skipped"):
            rows[parts[0]] = (parts[1], float(parts[2]))
    return rows


def _flow_runs() -> int:
    """kontext-train flow runs in the Prefect server's database (the session's test harness)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["kontext-train"]))))


def _mlflow_runs(db) -> int:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(experiments, max_results=1000)) if experiments else 0


def test_run_output_is_bounded_and_ends_with_a_stage_summary(tmp_path, mlflow_db, prefect_harness, monkeypatch):
    monkeypatch.delenv(MODE_ENV, raising=False)
    # 60 steps: the train stage alone would write 60 lines if every step printed one.
    params_file = make_project(tmp_path / "project", mlflow_db=mlflow_db, max_train_steps=60)

    flows_before, mlflow_before = _flow_runs(), _mlflow_runs(mlflow_db)
    first = CliRunner().invoke(app, ["run", "--params", str(params_file)])
    assert first.exit_code == 0, first.output
    # The counts below see a run: the first one is one flow run and one MLflow run.
    assert (_flow_runs(), _mlflow_runs(mlflow_db)) == (flows_before + 1, mlflow_before + 1)
    assert "nothing ran" not in first.stdout
    assert "\r" not in first.stderr  # no redrawn bar in a log
    bars = _progress(first.stderr)
    for desc in ("pair", "degrade", "cache_vae", "cache_text", "train", "validate base", "validate lora"):
        assert bars[desc] >= 1, (desc, first.stderr[-3000:])
    assert any(desc.startswith("fetch ") for desc in bars)
    assert all(count <= MAX_LINES_PER_BAR for count in bars.values()), bars
    assert bars["train"] <= 100 // 5

    rows = _stage_rows(first.stdout)
    assert list(rows) == STAGE_ORDER
    assert all(status == "ran" and seconds > 0 for status, seconds in rows.values())
    assert re.search(r"^final loss: \d+\.\d{4} \(mean of the last fifth of 60 steps\)$", first.stdout, re.M)
    metric = r"^validation eval_loss: \d+\.\d{4} \(base model without the adapter: \d+\.\d{4}\)$"
    assert re.search(metric, first.stdout, re.M)
    psnr = r"^validation psnr: lora \d+\.\d{2} dB, base \d+\.\d{2} dB \(edits against the targets\)$"
    assert re.search(psnr, first.stdout, re.M)
    assert "champion: models:/kontext-lora/1 is the new champion (no champion before)" in first.stdout

    # A no-op run: every stage skipped, each still with its time; no progress at all.
    second = CliRunner().invoke(app, ["run", "--params", str(params_file)])
    assert second.exit_code == 0, second.output
    assert not _progress(second.stderr), second.stderr[:2500]
    rows = _stage_rows(second.stdout)
    assert list(rows) == STAGE_ORDER and {status for status, _ in rows.values()} == {"skipped"}
    assert "(decided by an earlier run)" in second.stdout
    # ... taken without Prefect or MLflow: no flow run and no MLflow run was started.
    assert "up to date: nothing ran (no Prefect or MLflow run started)" in second.stdout
    assert (_flow_runs(), _mlflow_runs(mlflow_db)) == (flows_before + 1, mlflow_before + 1)
    assert "champion: models:/kontext-lora/1 is the new champion (no champion before)" in second.stdout

    # A changed run setting: validate (and what follows) must run, so the normal path is taken.
    third = CliRunner().invoke(app, ["run", "--params", str(params_file), "--set", "validation_num_inference_steps=1"])
    assert third.exit_code == 0, third.output
    rows = _stage_rows(third.stdout)
    assert rows["validate"][0] == "ran" and rows["train"][0] == "skipped", rows
    assert "nothing ran" not in third.stdout
    assert (_flow_runs(), _mlflow_runs(mlflow_db)) == (flows_before + 2, mlflow_before + 2)
