"""A stop request stops: SIGTERM or SIGINT during training (under `kontext run`) or init's pretraining
(under `kontext stage`, DVC's way) ends the process at the next step, with one line, a non-zero exit,
nothing left in staging, the lock free, the MLflow run KILLED and the Prefect flow run Cancelled."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import pytest
import yaml

from kontext_core.lifecycle import leftovers
from kontext_core.project_lock import project_lock
from kontext_core.stages.engine import read_manifest

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

KONTEXT = Path(sys.executable).parent / "kontext"
STARTED_WITHIN_S = 300  # a bound on waiting for the stage to start, not a measured speed
STOPPED_WITHIN_S = 60  # the stage stops at its next step; a run that trained on would take far longer


def _stop_during(project: Path, args: list[str], running: str, sig: int) -> tuple[int, list[str]]:
    """Start `kontext ARGS` in the project, send `sig` once its log says `running`; (exit code, stderr lines)."""
    env = {**os.environ, "PREFECT_HOME": str(project / ".prefect-home"), "KONTEXT_PROGRESS": "off"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [str(KONTEXT), *args], cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if running in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(STARTED_WITHIN_S) or proc.poll() is not None, "the stage did not start"
        assert proc.poll() is None, "\n".join(lines[-40:])
        proc.send_signal(sig)
        code = proc.wait(timeout=STOPPED_WITHIN_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    return code, lines


def _statuses(project: Path) -> list[str]:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return [r.info.status for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def _assert_clean_stop(project: Path, code: int, lines: list[str], sig: int, where: str) -> None:
    name = signal.Signals(sig).name
    assert code == 128 + sig, "\n".join(lines[-40:])
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: stopped by {name} at {where}"), "\n".join(lines[-40:])
    assert not any("Traceback" in line for line in lines), "\n".join(lines[-60:])
    assert leftovers(project) == []
    with project_lock(project, wait=0) as first:  # released: a new run may start at once
        assert first


def test_sigterm_during_training_under_kontext_run(project_copy):
    project = project_copy
    before = read_manifest(project, "train")
    code, lines = _stop_during(
        project,
        ["run", "--no-dvc-commit", "--params", "params.yaml", "--set", "max_train_steps=100000"],
        "stage train: running",
        signal.SIGTERM,
    )
    _assert_clean_stop(project, code, lines, signal.SIGTERM, "train step")
    assert read_manifest(project, "train") == before  # the unfinished stage kept nothing
    statuses = _statuses(project)
    assert "KILLED" in statuses and "RUNNING" not in statuses, statuses
    with sqlite3.connect(project / ".prefect-home" / "prefect.db") as db:
        states = [row[0] for row in db.execute("select state_type from flow_run")]
    assert states == ["CANCELLED"], states


def test_sigint_during_init_pretraining_under_kontext_stage(project_copy):
    project = project_copy
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tiny_model"]["pretrain_vae_steps"] = 100000
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    args = ["stage", "init", "--params", "params.yaml"]
    code, lines = _stop_during(project, args, "stage init: running", signal.SIGINT)
    _assert_clean_stop(project, code, lines, signal.SIGINT, "pretrain")
    assert "RUNNING" not in _statuses(project)


@pytest.mark.parametrize(("stage", "store"), [("cache_vae", "cache/vae/latents"), ("cache_text", "cache/text/embeds")])
def test_a_stop_request_stops_an_encode_at_its_next_batch(project_copy, stage, store):
    """The encode loops' safe point (the signal handler only sets what `request_stop` sets)."""
    from kontext_core.lifecycle import StopRequested, clear_stop, request_stop
    from kontext_core.stages import run_stage

    project = project_copy
    for entry in sorted((project / store).rglob("*.safetensors"))[:3]:
        entry.unlink()
    before = read_manifest(project, stage)
    request_stop("SIGTERM")
    try:
        with pytest.raises(StopRequested, match=f"stopped by SIGTERM at {stage} after 0 of 3"):
            run_stage(stage, project / "params.yaml")
    finally:
        clear_stop()
    assert read_manifest(project, stage) == before and leftovers(project) == []
    assert not run_stage(stage, project / "params.yaml")["skipped"]  # the next run encodes them
