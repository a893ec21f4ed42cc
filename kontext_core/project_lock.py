"""One pipeline at a time per project: an advisory lock on `.kontext/lock` (fcntl.flock).

`kontext run`, `kontext stage` (so each stage under `dvc repro`) and `run_stage` take it. A second
run in the same project refuses at once with a one-line error naming the holder's pid, command and
start time; with `KONTEXT_LOCK_WAIT=SECONDS` it waits up to that long first (then refuses). The
kernel drops the lock when its process dies (kill -9 included), so a stale lock file never blocks.
The lock is re-entrant within one process (Prefect runs the stages in threads of the flow's process),
and a descendant of the holder (an `accelerate` worker, a process pool, a task runner's worker)
runs under its parent's lock.

Across machines (a project on a network file system, or two clones sharing an MLflow server) the
registry step stays safe on its own: a version is created once per adapter hash
(kontext_core.tracking.registry).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = ".kontext/lock"
WAIT_ENV = "KONTEXT_LOCK_WAIT"
POLL_SECONDS = 0.5


class ProjectLocked(RuntimeError):
    """Another process holds the project's lock."""


_held: dict[str, tuple[int, int]] = {}  # resolved project -> (fd, depth)
_guard = threading.RLock()


def lock_path(workdir: Path) -> Path:
    return Path(workdir) / LOCK_FILE


def holder(workdir: Path) -> dict[str, object]:
    """What the lock file says about its holder (pid, started, command); {} when unreadable."""
    try:
        data = json.loads(lock_path(workdir).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(workdir: Path) -> str:
    info = holder(workdir)
    if not info:
        return "another process"
    return f"pid {info.get('pid')} ({info.get('command', '?')}, started {info.get('started', '?')})"


def _wait_seconds(wait: float | None) -> float:
    if wait is not None:
        return wait
    try:
        return max(0.0, float(os.environ.get(WAIT_ENV, "0") or 0))
    except ValueError:
        raise ProjectLocked(f"{WAIT_ENV}={os.environ.get(WAIT_ENV)!r} is not a number of seconds") from None


def held_here(workdir: Path) -> bool:
    return str(Path(workdir).resolve()) in _held


@contextlib.contextmanager
def project_lock(workdir: Path, wait: float | None = None) -> Iterator[bool]:
    """Hold the project's lock for the block; yields True when this call took it (first holder in
    this process), False when the process already held it. Raises ProjectLocked when another process
    holds it for longer than `wait` seconds (default: KONTEXT_LOCK_WAIT, else 0)."""
    key = str(Path(workdir).resolve())
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            first = False
        else:
            first = True
    if first:
        fd = _acquire(Path(key), _wait_seconds(wait))
        with _guard:
            _held[key] = (fd, 1)
    try:
        yield first
    finally:
        with _guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                if fd >= 0:
                    try:
                        os.ftruncate(fd, 0)
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                        os.close(fd)


def _ancestors() -> set[int]:
    """The pids above this process (Linux /proc; empty elsewhere)."""
    found: set[int] = set()
    pid = os.getppid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def _held_by_an_ancestor(workdir: Path) -> bool:
    pid = holder(workdir).get("pid")
    return isinstance(pid, int) and pid in _ancestors()


def _acquire(workdir: Path, wait: float) -> int:
    path = lock_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if _held_by_an_ancestor(workdir):
                # A worker of the run that holds the lock (accelerate, a process pool, a task runner).
                os.close(fd)
                return -1
            if time.monotonic() >= deadline:
                os.close(fd)
                hint = f"wait for it or set {WAIT_ENV}=SECONDS to queue behind it"
                raise ProjectLocked(f"project {workdir} is in use by {_describe(workdir)}: {hint}") from None
            if not told:
                print(f"waiting up to {wait:g} s for {_describe(workdir)} to finish", file=sys.stderr)
                told = True
            time.sleep(POLL_SECONDS)
    record = {
        "pid": os.getpid(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))[:300],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd
