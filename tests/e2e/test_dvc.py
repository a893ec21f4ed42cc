"""DVC as its users use it, on one copy of the project in a real git + DVC repository.

The tests share that repository (one full pipeline run) and follow each other as a user would:
`dvc repro`, then `kontext run` (nothing to do), a parameter change run by the flow that the next
`dvc repro` trusts, commits compared with `dvc params/metrics/plots diff`, two queued experiments
and a failed one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kontext_core.fsutil import sha256_tree
from kontext_core.stages import STAGE_ORDER
from tests.conftest import write_params
from tests.e2e.dvc_repo import dvc, git, kontext, new_dvc_project, ok, porcelain, ran_stages

pytestmark = pytest.mark.slow

TRAIN_METRICS = "artifacts/metrics/train.json"
VALIDATE_METRICS = "artifacts/metrics/validate.json"


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mlflow_template):
    project = new_dvc_project(tmp_path_factory.mktemp("dvc") / "clone", mlflow_template)
    first = ok(dvc(project, "repro"))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "first repro")
    return project, first.stdout


def test_repro_runs_every_stage_then_is_up_to_date(repo):
    project, first = repo
    assert ran_stages(first) == STAGE_ORDER
    lock = (project / "dvc.lock").read_text()
    assert all(f"  {name}:" in lock for name in STAGE_ORDER)
    # Metrics and plots are committed to git (small, cache: false), not ignored.
    tracked = git(project, "ls-files", "artifacts").split()
    assert {TRAIN_METRICS, VALIDATE_METRICS, "artifacts/plots/train_loss.csv"} <= set(tracked)
    second = ok(dvc(project, "repro"))
    assert ran_stages(second.stdout) == []
    assert porcelain(project) == ""


def test_after_dvc_repro_kontext_run_reruns_nothing(repo):
    project, _ = repo
    flow = ok(kontext(project, "run"))
    assert "stages run: none (all up to date)" in flow.stdout
    assert ran_stages(ok(dvc(project, "repro")).stdout) == []


def test_after_kontext_run_dvc_repro_reruns_nothing(repo, prefect_api_env):
    project, _ = repo
    write_params(project / "params.yaml", validation_seed=1)
    flow = ok(kontext(project, "run", env=prefect_api_env))  # the session's Prefect server, not its own
    assert "stages run: validate, register" in flow.stdout
    assert "dvc.lock updated" in flow.stdout
    again = ok(dvc(project, "repro"))
    assert ran_stages(again.stdout) == [], again.stdout
    git(project, "commit", "-qam", "validation seed 1")
    git(project, "tag", "seed-1")  # later tests commit on top; the comparison below names this one
    assert porcelain(project) == ""


def test_a_deployment_run_keeps_dvc_lock_in_step_and_says_what_an_override_left(repo, prefect_harness, monkeypatch):
    """The flow as a deployment runs it (no CLI): with an override it records nothing in dvc.lock and
    says the workspace holds that run's outputs; without one it records them (`dvc status` clean)."""
    from flows.summary import summary_markdown
    from flows.train_flow import kontext_train

    project, _ = repo
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    override = kontext_train(params_file="params.yaml", workdir=str(project), settings={"learning_rate": 0.005})
    assert override["workspace"]["dvc_lock"] == "dvc.lock not updated: this run overrode learning_rate=0.005"
    assert "`dvc status` shows the stages that ran as changed" in override["workspace"]["workspace"]
    assert override["workspace"]["workspace"] in summary_markdown(override, {})
    status = ok(dvc(project, "status")).stdout
    assert "train:" in status and "changed outs" in status, status

    plain = kontext_train(params_file="params.yaml", workdir=str(project))
    assert plain["stages"]["train"] == "ran"
    assert plain["workspace"]["dvc_lock"].startswith("dvc.lock updated")
    assert "Data and pipelines are up to date" in ok(dvc(project, "status")).stdout
    assert ran_stages(ok(dvc(project, "repro")).stdout) == []
    git(project, "commit", "-qam", "deployment runs")  # dvc.lock: the registration names this run


def test_commits_compare_with_params_metrics_and_plots_diff(repo):
    project, _ = repo
    before, after = "seed-1~1", "seed-1"  # the commit of the validation_seed change and its parent
    params = json.loads(ok(dvc(project, "params", "diff", before, after, "--json")).stdout)
    seed = params["params.yaml"]["validation_seed"]
    assert (seed["old"], seed["new"]) == (0, 1)
    assert len(params["params.yaml"]) == 1
    metrics = json.loads(ok(dvc(project, "metrics", "diff", before, after, "--all", "--json")).stdout)
    assert set(metrics) == {TRAIN_METRICS, VALIDATE_METRICS}
    psnr = metrics[VALIDATE_METRICS]["psnr"]
    assert isinstance(psnr["old"], float) and isinstance(psnr["new"], float)
    plots = json.loads(ok(dvc(project, "plots", "diff", before, after, "--json")).stdout)
    (loss_plot,) = plots["data"]["artifacts/plots/train_loss.csv"]
    assert loss_plot["revisions"] == [before, after]
    assert {point["rev"] for point in loss_plot["content"]["data"]["values"]} == {before, after}
    # `dvc plots show` writes dvc_plots/: ignored, the workspace stays clean.
    ok(dvc(project, "plots", "show"))
    assert (project / "dvc_plots").is_dir()
    assert porcelain(project) == ""


def _experiments(project) -> dict[str, dict]:
    """name -> {params, metrics} from `dvc exp show --json` (experiments of the workspace's HEAD)."""
    shown = json.loads(ok(dvc(project, "exp", "show", "--json")).stdout)
    found = {}
    for baseline in shown:
        for exp_run in baseline.get("experiments") or []:
            for rev in exp_run["revs"]:
                data = rev["data"]
                found[rev["name"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": {path: m["data"] for path, m in data["metrics"].items()},
                }
    return found


def test_two_queued_experiments_run_only_training_and_keep_the_workspace(repo):
    project, _ = repo
    adapter = sha256_tree(project / "models/adapter")
    for name, lr in (("lr-fast", "0.006"), ("lr-slow", "0.0015")):
        ok(dvc(project, "exp", "run", "--queue", "-n", name, "-S", f"learning_rate={lr}"))
    ok(dvc(project, "exp", "run", "--run-all", "-j", "1"))
    experiments = _experiments(project)
    assert {"lr-fast", "lr-slow"} <= set(experiments)
    assert experiments["lr-fast"]["params"]["learning_rate"] == 0.006
    assert experiments["lr-slow"]["params"]["learning_rate"] == 0.0015
    for name in ("lr-fast", "lr-slow"):
        metrics = experiments[name]["metrics"]
        assert {"loss_first", "loss_last", "steps"} <= set(metrics[TRAIN_METRICS]), name
        assert {"psnr", "psnr_base"} <= set(metrics[VALIDATE_METRICS]), name
    # Different learning rates, different training: the metrics really are each experiment's own.
    assert experiments["lr-fast"]["metrics"][TRAIN_METRICS] != experiments["lr-slow"]["metrics"][TRAIN_METRICS]
    for name in ("lr-fast", "lr-slow"):
        log = ok(dvc(project, "queue", "logs", name)).stdout
        assert ran_stages(log) == ["train", "validate", "register"], log[-2000:]
    diff = json.loads(ok(dvc(project, "exp", "diff", "lr-fast", "lr-slow", "--json")).stdout)
    assert set(diff["params"]["params.yaml"]) == {"learning_rate"}
    # Queued experiments run in a copy: the workspace is as it was.
    assert porcelain(project) == ""
    assert sha256_tree(project / "models/adapter") == adapter
    assert ran_stages(ok(dvc(project, "repro")).stdout) == []


def test_a_failed_experiment_leaves_the_workspace_as_it_was(repo):
    project, _ = repo
    adapter = sha256_tree(project / "models/adapter")
    params = (project / "params.yaml").read_text()
    failed = dvc(project, "exp", "run", "--temp", "-S", "optimizer=sgd")
    assert failed.returncode != 0
    assert "optimizer = 'sgd'" in failed.stdout + failed.stderr
    assert (project / "params.yaml").read_text() == params
    assert porcelain(project) == ""
    assert sha256_tree(project / "models/adapter") == adapter
    assert "up to date" in ok(dvc(project, "status")).stdout.lower()


def _stage_process(project: Path, stage: str) -> psutil.Process | None:
    """The `kontext stage NAME` process that DVC started in `project`."""
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = proc.info["cmdline"] or []
        if "stage" in cmdline and stage in cmdline and proc.info["cwd"] == str(project):
            return proc
    return None


def _repro_until_training(project: Path) -> tuple[subprocess.Popen, psutil.Process]:
    """`dvc repro` started, returned once its `kontext stage train` has opened its MLflow run (the
    moment a kill leaves that run RUNNING); with the train stage's process."""
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
    while repro.poll() is None and time.monotonic() < deadline:
        train = train or _stage_process(project, "train")
        if train is not None and open_runs.exists() and json.loads(open_runs.read_text()):
            break
        time.sleep(0.05)
    assert train is not None, "dvc repro did not start the train stage"
    return repro, train


# Last in the module: it leaves the shared repository with changed params.
def test_a_killed_train_stage_leaves_no_running_mlflow_run_after_the_next_repro(repo):
    import mlflow

    project, _ = repo
    write_params(project / "params.yaml", learning_rate=0.002, max_train_steps=400)
    repro, train = _repro_until_training(project)
    open_runs = project / "artifacts/mlflow/open_runs.json"
    killed_run = json.loads(open_runs.read_text())[-1]
    train.send_signal(signal.SIGKILL)
    assert repro.wait(timeout=120) != 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert client.get_run(killed_run).info.status == "RUNNING"

    write_params(project / "params.yaml", max_train_steps=6)
    ok(dvc(project, "repro"))
    killed = client.get_run(killed_run)
    assert killed.info.status == "FAILED"
    assert "abandoned" in killed.data.tags["kontext.failure"]
    runs = client.search_runs([r.experiment_id for r in client.search_experiments()])
    assert runs and not [r.info.run_id for r in runs if r.info.status == "RUNNING"]


@pytest.mark.reliability
def test_a_stage_does_not_outlive_a_killed_dvc_repro(repo):
    """kill -9 of `dvc repro` while `kontext stage train` runs: the stage ends too (it would otherwise
    keep writing while the next `dvc repro` starts the stage again)."""
    project, _ = repo
    write_params(project / "params.yaml", learning_rate=0.003, max_train_steps=400)
    repro, train = _repro_until_training(project)
    repro.send_signal(signal.SIGKILL)
    repro.wait(timeout=30)
    try:
        train.wait(timeout=30)
    except psutil.TimeoutExpired:
        train.kill()
        pytest.fail("`kontext stage train` outlived the killed `dvc repro`")
