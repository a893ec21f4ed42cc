"""The recorded commit in a git worktree, and the project's data brought into it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from kontext_core.reproduce.record import CannotReproduce


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise CannotReproduce(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip()}")
    return done.stdout.strip()


def checkout(project: Path, commit: str, workdir: Path) -> Path:
    """`git worktree add` of `commit` at `workdir` (or reuse one already there); the project inside it.

    The project may sit in a sub-folder of its repository: the same sub-folder of the worktree is
    returned. A reused worktree must be at `commit` with no tracked file changed.
    """
    top = Path(git(project, "rev-parse", "--show-toplevel")).resolve()
    if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=top, capture_output=True).returncode:
        raise CannotReproduce(f"commit {commit[:12]} is not in the repository at {top.name}/ (fetch it first)")
    inside = project.resolve().relative_to(top)
    if (workdir / ".git").exists():
        # The restored params.yaml of the last reproduction is the one file expected to differ.
        subprocess.run(["git", "checkout", "--", str(inside / "params.yaml")], cwd=workdir, capture_output=True)
        head = git(workdir, "rev-parse", "HEAD")
        if head != commit or git(workdir, "status", "--porcelain", "--untracked-files=no"):
            raise CannotReproduce(f"--workdir {workdir} holds another commit ({head[:12]}) or changed files")
    elif workdir.exists() and any(workdir.iterdir()):
        raise CannotReproduce(f"--workdir {workdir} is neither empty nor a worktree of the project")
    else:
        git(top, "worktree", "add", "--detach", str(workdir), commit)
    return workdir / inside


def remove_worktree(project: Path, workdir: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(workdir)], cwd=project, capture_output=True)
    shutil.rmtree(workdir, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=project, capture_output=True)


def _local(value: Any, project: Path) -> str | None:
    """A project-relative path that exists in the project (hub ids and absolute paths are not copied)."""
    if not isinstance(value, str) or not value or Path(value).is_absolute():
        return None
    return value if (project / value).exists() else None


def data_paths(params: dict[str, Any], checkout_dir: Path, project: Path, generated: list[str]) -> list[str]:
    """Project-relative data the rebuild needs that git does not hold.

    `generated` are the outputs of stages without upstream (the demo's model and sample data):
    brought over when the project has them, rebuilt by their stage otherwise. Beside them, every
    dataset folder or local dataset file the dataset file names, and a local base model.
    """
    wanted = [rel for rel in generated if (project / rel).exists()]
    dataset_file = checkout_dir / str(params.get("data_backend_config", ""))
    entries = json.loads(dataset_file.read_text()) if dataset_file.is_file() else []
    # (what, value, is always a path): a model id or dataset_name may be a hub id instead.
    refs: list[tuple[str, Any, bool]] = [("base model", params.get("pretrained_model_name_or_path"), False)]
    for entry in entries:
        if not entry.get("disabled"):
            label = f"dataset '{entry.get('id')}'"
            refs += [(label, entry.get("instance_data_dir"), True), (label, entry.get("dataset_name"), False)]
    for label, value, is_path in refs:
        if not isinstance(value, str) or not value or any(_under(value, g) for g in generated):
            continue
        rel = _local(value, project)
        if rel is not None:
            if not any(_under(rel, kept) for kept in wanted):
                wanted.append(rel)
        elif is_path and not Path(value).is_absolute():
            raise CannotReproduce(f"data not available: {label} ({value}) is not in the project")
    return wanted


def _under(path: str, folder: str) -> bool:
    return Path(path) == Path(folder) or Path(folder) in Path(path).parents


def bring_data(project: Path, checkout_dir: Path, paths: list[str]) -> None:
    """Copy each path from the project into the checkout (replacing what a reused workdir holds)."""
    for rel in paths:
        source, dest = project / rel, checkout_dir / rel
        if dest.is_dir():
            shutil.rmtree(dest)
        elif dest.exists():
            dest.unlink()
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, symlinks=True)
        else:
            shutil.copy2(source, dest)
