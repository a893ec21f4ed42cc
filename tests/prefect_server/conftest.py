"""A real `prefect server start` on 127.0.0.1 for the session, and process workers on two pools.

The server gets a free port and its own PREFECT_HOME (a fresh SQLite database); every wait is
bounded. The tests of this folder talk to it through PREFECT_API_URL, as a user's CLI and UI do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

SERVER_START_TIMEOUT = 240
WORKER_START_TIMEOUT = 120
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """End a process this fixture started, and its children (its own process group)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """`prefect server start` on 127.0.0.1:<free port>; yields the environment that points at it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while not _healthy(url):
        if server.poll() is not None or time.monotonic() > deadline:
            _stop(server)
            raise RuntimeError(f"prefect server did not become healthy: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(1)
    saved = {key: os.environ.get(key) for key in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ.update({"PREFECT_API_URL": url, "PREFECT_HOME": str(home)})
    try:
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: str(home)}):
            yield env
    finally:
        # Logs and events still queued in this process go out before the server stops (else the
        # queues retry against a closed port at exit).
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=30)
        EventsWorker.drain_all(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _stop(server)


def run_cli(env: dict[str, str], *args: str, timeout: int = 300) -> str:
    result = subprocess.run(
        [PREFECT, "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed: {result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


@pytest.fixture(scope="session")
def deployed(prefect_server) -> dict[str, str]:
    """The two work pools and every deployment of infra/prefect.yaml, as the README says to create them."""
    for pool in ("kontext-cpu", "kontext-gpu"):
        run_cli(prefect_server, "work-pool", "create", pool, "--type", "process", "--overwrite")
    run_cli(prefect_server, "deploy", "--prefect-file", "infra/prefect.yaml", "--all")
    return prefect_server


@pytest.fixture(scope="session")
def workers(deployed, tmp_path_factory) -> Iterator[dict[str, subprocess.Popen]]:
    """One process worker per pool, each started from the checkout (as on two machines)."""
    logs = tmp_path_factory.mktemp("workers")
    procs: dict[str, subprocess.Popen] = {}
    try:
        for pool in ("kontext-cpu", "kontext-gpu"):
            procs[pool] = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--name", f"test-{pool}"],
                env={**deployed, "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "5"},
                cwd=ROOT,
                stdout=(logs / f"{pool}.log").open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_for_workers(list(procs))
        yield procs
    finally:
        for proc in procs.values():
            _stop(proc)


def _wait_for_workers(pools: list[str]) -> None:
    import asyncio

    from prefect.client.orchestration import get_client

    async def online() -> bool:
        async with get_client() as client:
            for pool in pools:
                if not any(w.status == "ONLINE" for w in await client.read_workers_for_work_pool(pool)):
                    return False
        return True

    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while not asyncio.run(online()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers of {pools} did not come online in {WORKER_START_TIMEOUT}s")
        time.sleep(1)
