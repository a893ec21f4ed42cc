"""Serve a registered version over REST with MLflow's own scoring server, started so it stops cleanly.

`mlflow models serve --env-manager local` runs `bash -c "exec uvicorn ..."`: `uvicorn` must be on
PATH (a virtualenv's bin often is not), and the server is a child of the `mlflow` process, so killing
that process by its pid leaves uvicorn holding the port. `serve_model` puts this interpreter's bin
first on PATH, starts the stock command in a process group of its own and ends the whole group when
it is stopped (SIGINT, SIGTERM or any exit of the caller's code).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

# How long the server's process group gets to exit on SIGTERM before it is killed.
STOP_GRACE_S = 10.0


def server_environment(tracking_uri: str, project: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the stock command: this interpreter's bin first on PATH (for `uvicorn`),
    the project's store, and the project as the root its base model is recorded under."""
    from kontext_core.tracking.pyfunc_model import ROOT_ENV

    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir)])
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.setdefault(ROOT_ENV, str(project))
    return env


def serve_command(model_uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """Stock `mlflow models serve`, run by this interpreter."""
    return [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", model_uri, "--env-manager", "local",
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip


def stop_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
    """End the server's whole process group (mlflow, bash's exec'd uvicorn, its workers); returns its code."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return process.wait()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("the model server did not stop within %.0f s: killed", grace_s)
    # The leader may have gone while a uvicorn worker lingers: the group goes in any case.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return process.wait()


@contextmanager
def model_server(
    model_uri: str, host: str, port: int, env: dict[str, str], workers: int = 1
) -> Iterator[subprocess.Popen]:
    """The stock server running in its own process group for the duration of the block."""
    process = subprocess.Popen(serve_command(model_uri, host, port, workers), env=env, start_new_session=True)
    try:
        yield process
    finally:
        stop_group(process)


def serve_model(model_uri: str, host: str, port: int, env: dict[str, str], workers: int = 1) -> int:
    """Run the server until it exits or this process gets SIGINT/SIGTERM; the group always goes with it."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with model_server(model_uri, host, port, env, workers) as process:
            log.info("serving %s on http://%s:%d/invocations (pid group %d)", model_uri, host, port, process.pid)
            try:
                return process.wait()
            except KeyboardInterrupt:
                log.info("stopping the model server")
                return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
