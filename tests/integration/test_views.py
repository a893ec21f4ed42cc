"""What a user reads: a handful of metrics, curves as plot files, a plots page that renders offline,
README transcripts in the code's own format, and a loss curve on the run a version comes from."""

from __future__ import annotations

import csv
import json
import re

import mlflow
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.tracking.lineage import log_loss_curve
from tests.conftest import FAST, ROOT

SCALARS = {"eval_loss", "eval_loss_base", "psnr", "psnr_base", "ssim", "ssim_base", "eval_pairs"}


def test_metrics_keep_the_scalars_and_the_timesteps_go_to_a_plot(built_project):
    metrics = json.loads((built_project / "artifacts/metrics/validate.json").read_text())
    assert set(metrics) == SCALARS
    with open(built_project / "artifacts/plots/eval_loss_by_timestep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["timestep", "eval_loss", "eval_loss_base"]
    assert len(rows) == FAST["eval_timesteps"]
    assert [int(r["timestep"]) for r in rows] == sorted(int(r["timestep"]) for r in rows)


def test_plots_page_draws_every_declared_plot_without_scripts(built_project, tmp_path):
    out = tmp_path / "plots.html"
    result = CliRunner().invoke(app, ["plots", "--params", str(built_project / "params.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<script" not in page.lower() and not re.search(r"""src\s*=\s*["']?https?:""", page, re.I)
    assert page.count("<svg") == 2 and page.count("<polyline") == 3  # train loss; eval loss lora + base
    for name in ("artifacts/plots/train_loss.csv", "artifacts/plots/eval_loss_by_timestep.csv"):
        assert f"<h2>{name}</h2>" in page


def test_a_run_without_a_loss_curve_gets_it_from_the_loss_file(built_project, tmp_path, mlflow_db):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    loss_csv = built_project / "artifacts/plots/train_loss.csv"
    assert log_loss_curve(client, run_id, loss_csv)
    history = client.get_metric_history(run_id, "train/loss")
    assert len(history) == FAST["max_train_steps"] == len(loss_csv.read_text().splitlines()) - 1
    assert not log_loss_curve(client, run_id, loss_csv)  # a run with its own curve keeps it
    assert len(client.get_metric_history(run_id, "train/loss")) == len(history)


def _block_after(text: str, command: str) -> list[str]:
    """The lines a README transcript shows for `$ command`, up to the next `$ ` line or the fence."""
    lines = text[text.index(f"$ {command}\n") :].splitlines()[1:]
    out = []
    for line in lines:
        if line.startswith("$ ") or line.startswith("```"):
            break
        out.append(line)
    return out


def test_readme_dvc_transcript_names_what_the_code_writes(built_project):
    """The README's `dvc metrics diff` and `dvc exp show` transcripts list metrics the metrics files
    really have (and no per-timestep column); its summary transcript has every line summary_lines makes."""
    readme = (ROOT / "README.md").read_text()
    written = {
        path: set(json.loads((built_project / path).read_text()))
        for path in ("artifacts/metrics/train.json", "artifacts/metrics/validate.json")
    }
    rows = [line.split() for line in _block_after(readme, "dvc metrics diff")[1:] if line.strip()]
    assert rows and all(row[0] in written and row[1] in written[row[0]] for row in rows), rows
    header = next(line for line in _block_after(readme, "dvc exp show --no-pager --only-changed --drop "
                  "'Created|artifacts/.*|models/.*'") if "Experiment" in line).split()
    metric_columns = [c for c in header[1:] if c not in ("learning_rate",)]
    assert metric_columns and set(metric_columns) <= set().union(*written.values()), header
    assert not any(re.search(r"_t\d{4}$", c) for c in header)


def _shape(line: str) -> str:
    line = re.sub(r"\b(ran|skipped)\b", "STATUS", line)
    line = re.sub(r"\(decided by an earlier run\)", "", line)
    # Column widths follow the values (ran/skipped, 58.55/0.00): the words and their order are the format.
    return " ".join(re.sub(r"-?\d+(\.\d+)?", "N", line).split())


def test_readme_run_summary_has_the_shape_of_the_code_s_summary(built_project):
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("```\nstage       status     seconds\n") + 4 :]
    shown = block[: block.index("```")].splitlines()
    result = CliRunner().invoke(app, ["run", "--params", str(built_project / "params.yaml")])
    assert result.exit_code == 0, result.output
    printed = {_shape(line) for line in result.output.splitlines()}
    prefixes = ("stage ", "init ", "train ", "total ", "final loss:", "validation ", "champion: models:/kontext-lora/")
    checked = [line for line in shown if line.startswith(prefixes)]
    assert len(checked) >= 8
    for line in checked:
        assert _shape(line) in printed, f"README line not in the code's format: {line!r}"
