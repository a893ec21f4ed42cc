"""The champion served over REST by stock MLflow, started as the README says, stopped with every process."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
START_LIMIT_S = 240


def readme_request() -> dict:
    """The request body the README shows (its ```json block under "Serving over REST")."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Serving over REST") :]
    return json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens on it (SO_REUSEADDR as a server sets it: the request's own closed connection
    may wait in TIME_WAIT, which is not a process holding the port)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def test_served_champion_edits_a_posted_image_and_stops_with_its_children(built_project):
    port = free_port()
    # A fresh shell: the virtualenv's bin is not on PATH (where stock `mlflow models serve` fails on uvicorn).
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"
    kontext = Path(sys.executable).parent / "kontext"
    server = subprocess.Popen(
        [str(kontext), "serve-model", "--port", str(port), "--params", "params.yaml"],
        cwd=built_project,
        env=env,
    )
    started: set[int] = set()
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while True:
            assert server.poll() is None, "the server exited before it answered"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"no answer on port {port} within {START_LIMIT_S} s"
            time.sleep(1)
        started = descendants(server.pid)
        assert started, "the stock server runs in processes of its own"

        source = Image.open(next((built_project / "data/samples/pairs-eval/reference").glob("*.png")))
        source = source.convert("RGB").resize((48, 32))
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        body = readme_request()
        body["dataframe_split"]["data"][0][0] = base64.b64encode(buffer.getvalue()).decode()
        body["params"]["num_inference_steps"] = 2
        began = time.perf_counter()
        answer = post(f"http://127.0.0.1:{port}/invocations", body)
        print(f"POST /invocations 48x32, 2 steps: {time.perf_counter() - began:.2f} s")
        edited = Image.open(io.BytesIO(base64.b64decode(answer["predictions"][0]["image"])))
        edited.load()
        assert edited.size == source.size
        assert edited.convert("RGB").tobytes() != source.tobytes()
    finally:
        started |= descendants(server.pid)
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    assert code == 0
    left = [pid for pid in started if alive(pid)]
    assert not left, f"processes left running after the server stopped: {left}"
    assert port_is_free(port)


def test_a_request_without_params_gets_the_versions_own_defaults(built_project):
    """The signature's param defaults are the model's: MLflow fills a request's missing params from them."""
    import mlflow

    from kontext_core.config import load_params

    uri = f"sqlite:///{built_project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    params = load_params(built_project / "params.yaml")
    info = mlflow.models.get_model_info("models:/kontext-lora@champion")
    defaults = {p.name: p.default for p in info.signature.params.params}
    assert defaults["num_inference_steps"] == params.validation_num_inference_steps
    assert defaults["guidance_scale"] == params.validation_guidance
