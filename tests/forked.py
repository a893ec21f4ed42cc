"""A stage run in a child forked from one warm interpreter (multiprocessing's forkserver).

A test that kills a stage mid-run needs the stage in a process of its own, but a fresh `python -c`
spends about 5 s of CPU importing torch, diffusers and MLflow before the stage starts. The forkserver
imports them once (`PRELOAD`); each child is a fork of it: a new process, killed as any other, that
starts with those modules loaded. The server has run no torch kernel, so its children start
with no thread pool inherited half-made.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from pathlib import Path

PRELOAD = ["tests.forked", "kontext_core.stages", "kontext_core.model.load", "kontext_core.tracking.runs"]


def _run_stage(project: str, stage: str, env: dict[str, str], log: str) -> None:
    """The child: the project as its working directory, `env` added, stdout and stderr to `log`."""
    os.chdir(project)
    os.environ.update(env)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    from kontext_core.stages import run_stage

    run_stage(stage, "params.yaml")


def run_stage_forked(project: Path, stage: str, env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run `stage` of `project` in a forked child; returns its exit code (-9: SIGKILL) and its output."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    handle, name = tempfile.mkstemp(prefix="kontext-forked-", suffix=".log")  # outside the project
    os.close(handle)
    log = Path(name)
    child = context.Process(
        target=_run_stage, args=(str(project), stage, {"KONTEXT_PROGRESS": "off", **env}, str(log))
    )  # not a daemon: a stage may start processes of its own (degrade's pool)
    child.start()
    child.join(timeout)
    hung = child.exitcode is None
    if hung:
        child.kill()  # a SIGKILL of ours: not the exit code a caller may be waiting for
        child.join(30)
    output = log.read_text(errors="replace")
    log.unlink()
    if hung:
        raise TimeoutError(f"stage {stage} still ran after {timeout:.0f} s:\n{output[-3000:]}")
    return child.exitcode, output
