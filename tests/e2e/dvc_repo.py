"""A real git + DVC repository holding a copy of the project, and the commands run in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from kontext_core.dvc_yaml import write as write_dvc_yaml
from tests.conftest import ROOT, make_project

BIN = Path(sys.executable).parent


def env_for(project: Path) -> dict[str, str]:
    env = dict(os.environ)
    # DVC runs `kontext stage NAME`; queued and --temp experiments run in a copy of the repository
    # (without the gitignored mlflow.db), so they are pointed at the project's store.
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    # `kontext run` keeps its ephemeral Prefect database in the project, not the user's home.
    env["PREFECT_HOME"] = str(project / ".prefect")
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.invalid",
    )
    return env


def run(
    project: Path, *cmd: str, timeout: int = 1200, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full_env = {**env_for(project), **(env or {})}
    return subprocess.run(cmd, cwd=project, env=full_env, capture_output=True, text=True, timeout=timeout)


def dvc(project: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return run(project, str(BIN / "dvc"), *args, timeout=timeout)


def kontext(
    project: Path, *args: str, timeout: int = 1200, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`kontext ARGS` in the project; `env` adds to its environment (e.g. the session's Prefect API)."""
    return run(project, str(BIN / "kontext"), *args, timeout=timeout, env=env)


def git(project: Path, *args: str) -> str:
    done = run(project, "git", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"{done.args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def new_dvc_project(project: Path, mlflow_template: Path, **overrides) -> Path:
    """The project's config, code and ignore rules in a fresh git repo with `dvc init`, committed."""
    make_project(project, **overrides)
    shutil.copy(mlflow_template, project / "mlflow.db")
    # dvc.yaml names the code files as deps: the repo holds its own copy of them.
    shutil.copytree(ROOT / "kontext_core", project / "kontext_core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".gitignore", project / ".gitignore")
    write_dvc_yaml(project / "dvc.yaml")
    git(project, "init", "-q")
    ok(dvc(project, "init", "-q"))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "project")
    return project


def porcelain(project: Path) -> str:
    return git(project, "status", "--porcelain")
