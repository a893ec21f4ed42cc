"""What an interrupted run leaves behind, and child processes that must not outlive their parent.

- `clean_leftovers(project)`: staging folders (`.NAME.staging`), training job folders
  (`.train-job-*`), temp names of atomic writes (`.NAME.*.tmp`) and swapped-out outputs
  (`.NAME.old-PID`) under `data/`, `cache/`, `models/` and `artifacts/`. Only called by the holder of
  the project lock (kontext_core.project_lock), so none of them can belong to a live run.
- `contain_children()`: the process becomes the leader of its own process group (unless it already
  is, as under an interactive shell) and starts a small watchdog process. When this process dies
  (kill -9 included: the watchdog learns it through PR_SET_PDEATHSIG) or, when it had to make its own
  group, when the program that started it dies (DVC killed while `kontext stage train` runs), the
  watchdog ends the whole group: the ephemeral Prefect server, `accelerate launch` workers, data
  workers and the stage itself.
- `stop_on_signals()` and `check_stop(where)`: a SIGTERM or SIGINT asks the run to stop; the work
  loops (a training or pretraining step, an encode batch) call `check_stop` at each safe point and
  raise `StopRequested` there, so the stage ends within a step: its staging is removed, the lock
  released, MLflow and Prefect told, and the command exits non-zero with one line. A second signal
  stops at once (KeyboardInterrupt).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

LEFTOVER_ROOTS = ("data", "cache", "models", "artifacts")
_LEFTOVER = re.compile(r"^\.(.+\.staging|train-job-.*|.+\.tmp|.+\.old-\d+)$")
PR_SET_PDEATHSIG = 1
# Reliability tests kill a run at a chosen point: KONTEXT_TEST_KILL_AT=stage:point (the engine's points
# are start, before_swap = outputs written in staging, after_swap = outputs in place but no manifest;
# the registry's: version_created = version made, alias not moved).
KILL_ENV = "KONTEXT_TEST_KILL_AT"


class StopRequested(BaseException):
    """A stop signal reached a safe point. A BaseException, like KeyboardInterrupt: no `except
    Exception` in a stage or library may swallow it, and no retry runs the stage again."""

    def __init__(self, signal_name: str, where: str) -> None:
        self.signal_name, self.where = signal_name, where
        super().__init__(f"stopped by {signal_name} at {where}; the unfinished stage kept nothing")


# The name of the signal that asked to stop (None: no request); set by the handler, read by every thread.
_stop_signal: str | None = None
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_signal() -> str | None:
    return _stop_signal


def request_stop(signal_name: str) -> None:
    global _stop_signal
    _stop_signal = signal_name


def clear_stop() -> None:
    global _stop_signal
    _stop_signal = None


def check_stop(where: str) -> None:
    """Raise StopRequested when a stop was asked for; called between units of work (cheap)."""
    if _stop_signal is not None:
        raise StopRequested(_stop_signal, where)


def _on_signal(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    if _stop_signal is not None:  # asked twice: the user means now
        raise KeyboardInterrupt(f"{name} received twice")
    request_stop(name)
    log.warning("%s received: stopping at the next safe point (send it again to stop at once)", name)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT request a stop at the next safe point while inside (main thread only:
    elsewhere signals cannot be handled and this is a no-op). The previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def kill_point(name: str, point: str) -> None:
    """SIGKILL this process when KONTEXT_TEST_KILL_AT names this point (a test hook; no-op otherwise)."""
    if os.environ.get(KILL_ENV) == f"{name}:{point}":
        log.warning("%s: killed at %s (%s)", name, point, KILL_ENV)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def leftovers(project: Path) -> list[Path]:
    """Leftovers of interrupted runs in the project (hidden temp names; nothing a stage trusts)."""
    found: list[Path] = []
    for root_name in LEFTOVER_ROOTS:
        root = Path(project) / root_name
        if not root.is_dir():
            continue
        for folder, dirs, files in os.walk(root):
            for name in list(dirs):
                if _LEFTOVER.match(name):
                    found.append(Path(folder) / name)
                    dirs.remove(name)
            found.extend(Path(folder) / name for name in files if _LEFTOVER.match(name))
    return sorted(found)


def clean_leftovers(project: Path) -> list[str]:
    """Remove the leftovers of interrupted runs; returns their project-relative paths."""
    removed = []
    for path in leftovers(project):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.relative_to(project).as_posix())
    if removed:
        log.warning("removed %d leftover(s) of an interrupted run: %s", len(removed), ", ".join(removed[:5]))
    return removed


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send `sig` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks (tells a live pid from a reused one)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


_WATCHDOG = r"""
import os, signal, sys, time
sys.path.insert(0, sys.argv[4])
from kontext_core.lifecycle import _start_time, set_parent_death_signal
parent, pgid, guard = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
guard_start = sys.argv[5] if guard > 1 else None  # taken before this process started: no race

def reap(*_):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(pgid, signal.SIGTERM)
        time.sleep(2)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os._exit(0)

signal.signal(signal.SIGUSR1, reap)
signal.signal(signal.SIGINT, signal.SIG_IGN)
set_parent_death_signal(signal.SIGUSR1)
while True:
    if os.getppid() != parent:
        reap()
    if guard_start is not None and _start_time(guard) != guard_start:
        reap()
    time.sleep(0.5)
"""

_watchdog: subprocess.Popen | None = None


def contain_children() -> bool:
    """Make this process's children die with it (see the module doc); True when a watchdog runs.

    Idempotent; does nothing outside Linux or when KONTEXT_NO_WATCHDOG=1.
    """
    global _watchdog
    if _watchdog is not None:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("KONTEXT_NO_WATCHDOG") == "1":
        return False
    guard = 0
    if os.getpgrp() != os.getpid():
        # Started by a program without job control (DVC, make, a test): our own group, so that ending
        # it cannot touch the caller's processes; and we end when that program ends.
        guard = os.getppid()
        parent_name = Path(f"/proc/{guard}/comm").read_text().strip() if Path(f"/proc/{guard}/comm").exists() else ""
        if parent_name in {"sh", "bash", "dash", "zsh"}:
            # `sh -c "kontext stage train"` (DVC's way): the shell waits for us; watch its parent.
            try:
                guard = int(Path(f"/proc/{guard}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
        try:
            os.setpgid(0, 0)
        except OSError:
            return False
    package_root = str(Path(__file__).resolve().parents[1])
    guard_start = (_start_time(guard) or "gone") if guard > 1 else ""
    _watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(os.getpgrp()), str(guard), package_root, guard_start],
        stdin=subprocess.DEVNULL,
        close_fds=True,
    )
    return True
