"""Nothing interrupted is left behind, and one run at a time per project: the project lock, cleanup of
dead runs' leftovers, children that die with their parent, stale Prefect runs, file modes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.lifecycle import leftovers
from kontext_core.project_lock import ProjectLocked, project_lock
from tests.conftest import ROOT, make_project

pytestmark = pytest.mark.reliability


def _spawn(code: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)


def _read_line(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The process's first output line (bounded: a process that says nothing fails the test)."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    assert selector.select(timeout), "the helper process printed nothing in time"
    return proc.stdout.readline().strip()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_dead(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


HOLD = """
import sys, time
from kontext_core.project_lock import project_lock
with project_lock(sys.argv[1] if len(sys.argv) > 1 else "."):
    print("holding", flush=True)
    time.sleep(float({seconds}))
"""


def test_a_second_run_in_the_project_refuses_naming_the_holder(tmp_path):
    params = make_project(tmp_path)
    holder = _spawn(HOLD.format(seconds=120), tmp_path)
    try:
        assert _read_line(holder) == "holding"
        for args in (["stage", "init"], ["run", "--no-dvc-commit"]):
            result = CliRunner().invoke(app, [*args, "--params", str(params)])
            assert result.exit_code == 2, result.output
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and f"is in use by pid {holder.pid}" in lines[0], result.stderr
            assert "started 20" in lines[0] and "KONTEXT_LOCK_WAIT" in lines[0]
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with project_lock(tmp_path, wait=0) as first:  # the kernel dropped the killed holder's lock
        assert first


def test_with_a_wait_the_second_run_queues_behind_the_first(tmp_path):
    holder = _spawn(HOLD.format(seconds=2), tmp_path)
    assert _read_line(holder) == "holding"
    with pytest.raises(ProjectLocked):
        with project_lock(tmp_path, wait=0):
            pass
    with project_lock(tmp_path, wait=60) as first:
        assert first
    assert holder.wait(timeout=30) == 0  # it finished its work: the waiter did not break in


def test_leftovers_of_a_dead_run_are_removed_at_the_next_start(tmp_path):
    from kontext_core.stages import run_stage

    params = make_project(tmp_path)
    planted = [
        tmp_path / "models/.adapter.staging/pytorch_lora_weights.safetensors",
        tmp_path / "artifacts/.train-job-abc123/job.json",
        tmp_path / "cache/vae/latents/ab/.abcd.safetensors.x1y2.tmp",
        tmp_path / "data/.fetch.old-4242/records.json",
    ]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    kept = tmp_path / "cache/vae/latents/ab/abcd.safetensors"
    kept.write_text("an entry, not a leftover")
    assert len(leftovers(tmp_path)) == 4
    with pytest.raises(RuntimeError, match="needs stage 'init'"):
        run_stage("fetch", params)  # cleans up first, then refuses: init has not run
    assert leftovers(tmp_path) == [] and kept.exists()


CHILDREN = """
import subprocess, sys, time
from kontext_core.lifecycle import contain_children
assert contain_children()
child = subprocess.Popen(["sleep", "300"])
print(child.pid, flush=True)
time.sleep(300)
"""

LAUNCHER = """
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", {code!r}], stdout=subprocess.PIPE, text=True)
print(worker.pid, worker.stdout.readline().strip(), flush=True)
time.sleep(300)
"""


def test_children_die_when_their_parent_is_killed(tmp_path):
    parent = _spawn(CHILDREN, tmp_path)
    child = int(_read_line(parent))
    assert _alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=30)
    assert _wait_dead(child), "the child outlived its killed parent"


def test_a_stage_and_its_children_die_when_the_program_that_started_it_is_killed(tmp_path):
    """DVC killed while `kontext stage train` runs: the stage must not keep writing."""
    launcher = _spawn(LAUNCHER.format(code=CHILDREN), tmp_path)
    worker, child = (int(x) for x in _read_line(launcher).split())
    assert _alive(worker) and _alive(child)
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=30)
    assert _wait_dead(worker), "the stage outlived the program that started it"
    assert _wait_dead(child)


def test_outputs_are_0644_in_0755_folders_respecting_the_umask(tmp_path):
    from kontext_core.fsutil import atomic_dir, atomic_path

    for umask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o027, 0o640, 0o750)):
        old = os.umask(umask)
        try:
            with atomic_path(tmp_path / f"f{umask}") as tmp:
                tmp.write_text("x")
            with atomic_dir(tmp_path / f"d{umask}") as tmp:
                (tmp / "sub").mkdir()
                with atomic_path(tmp / "sub" / "w.bin") as inner:
                    inner.write_bytes(b"w")
        finally:
            os.umask(old)
        assert (tmp_path / f"f{umask}").stat().st_mode & 0o777 == file_mode
        assert (tmp_path / f"d{umask}").stat().st_mode & 0o777 == dir_mode
        assert (tmp_path / f"d{umask}/sub").stat().st_mode & 0o777 == dir_mode
        assert (tmp_path / f"d{umask}/sub/w.bin").stat().st_mode & 0o777 == file_mode


@pytest.mark.slow
def test_stale_prefect_runs_of_the_project_are_marked_crashed(tmp_path, prefect_harness):
    from prefect import get_client
    from prefect.states import Running

    from flows.lifecycle import crash_stale_flow_runs
    from flows.train_flow import kontext_train

    params = make_project(tmp_path / "here")
    other = make_project(tmp_path / "elsewhere")
    with get_client(sync_client=True) as client:
        mine = client.create_flow_run(kontext_train, parameters={"params_file": str(params)}, state=Running())
        theirs = client.create_flow_run(kontext_train, parameters={"params_file": str(other)}, state=Running())
        assert crash_stale_flow_runs(params.parent, current=None) == [str(mine.id)]
        assert client.read_flow_run(mine.id).state.type.value == "CRASHED"
        assert client.read_flow_run(theirs.id).state.type.value == "RUNNING"


@pytest.mark.slow
def test_killing_kontext_run_takes_its_ephemeral_prefect_server_with_it(tmp_path):
    """The probe of the issue: `kill -9` of `kontext run` once its ephemeral Prefect server is up."""
    import psutil

    params = make_project(tmp_path / "p")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "KONTEXT_PROGRESS": "off"}
    env.pop("PREFECT_API_URL", None)
    kontext = Path(sys.executable).parent / "kontext"
    run = subprocess.Popen(
        [str(kontext), "run", "--no-dvc-commit", "--params", str(params)],
        cwd=tmp_path / "p",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            children = psutil.Process(run.pid).children(recursive=True)
            if any("uvicorn" in " ".join(c.cmdline()) or "prefect" in " ".join(c.cmdline()) for c in children):
                break
            time.sleep(0.5)
        server = [c for c in children if "uvicorn" in " ".join(c.cmdline()) or "prefect" in " ".join(c.cmdline())]
        assert server, "the ephemeral Prefect server did not start in time"
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        assert all(_wait_dead(child.pid) for child in children), "a child of the killed run is still alive"
    finally:
        for child in children:
            if _alive(child.pid):
                child.kill()
        if run.poll() is None:
            run.kill()


def test_a_worker_process_of_the_holder_runs_under_its_lock(tmp_path):
    code = (
        "import sys; from kontext_core.project_lock import project_lock\n"
        "with project_lock(sys.argv[1], wait=0) as first: print('worker ran', first, flush=True)\n"
    )
    with project_lock(tmp_path, wait=0):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        worker = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
        )
    assert worker.returncode == 0, worker.stderr
    assert worker.stdout.strip() == "worker ran True"
