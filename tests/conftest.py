"""Shared fixtures: project copies with small params, one migrated MLflow store, one Prefect harness."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.pop("MLFLOW_TRACKING_URI", None)


def _xdist_worker_environment() -> None:
    """A pytest-xdist worker's environment (`make test` runs two workers), set before torch and
    Prefect are imported so that every subprocess a test starts inherits it too.

    - Each worker's torch gets its share of the cores: two processes that each spin one OpenMP thread
      per core slow each other down many times. Tests that compare bytes across processes (a test's
      own run against a `kontext run`, a stage, DVC's `kontext stage`) compare runs made under this
      one setting. Code that pins its own count (init's pretraining: two threads) still does;
      passive waiting keeps such a moment of oversubscription cheap. A count set by the user is kept.
    - Each worker gets a PREFECT_HOME of its own: a flow run in process without the session's
      harness starts an ephemeral server on the SQLite database there, and two workers must not
      migrate and write one database file at once.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if not worker or workers < 1:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(key, threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    os.environ["PREFECT_HOME"] = str(home / f"xdist-{worker}")


_xdist_worker_environment()

# Imported once here, while stderr is the session's: transformers binds its log handler's flush to the
# stderr of its first import and warns at import time; first imported inside a CliRunner call, that
# stream is closed by the next warning and the warning becomes a "--- Logging error ---" traceback.
import diffusers.pipelines.flux.pipeline_flux_kontext  # noqa: E402, F401

# Small enough for CI's two cores; the stages and geometry are the same as the demo's.
FAST = {
    "max_train_steps": 6,
    "eval_timesteps": 4,
    "validation_num_inference_steps": 2,
    "sample_data": {"seed": 0, "count": 4, "size": 64},
    # A few pretraining steps run the init stage's training code; the demo's counts take a minute.
    "tiny_model": {"seed": 0, "pretrain_vae_steps": 2, "pretrain_transformer_steps": 2},
}


def edit_kwargs(size: int, steps: int = 2) -> dict:
    """FluxKontextPipeline arguments for a small, explicit-size edit (its auto-resize targets ~1 MP)."""
    return dict(
        prompt="invert the colours",
        height=size,
        width=size,
        max_area=size * size,
        _auto_resize=False,
        num_inference_steps=steps,
        guidance_scale=2.5,
    )


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_project(dest: Path, mlflow_db: Path | None = None, *, shared_init: bool = False, **overrides) -> Path:
    """A copy of the project's configuration in `dest`; returns its params.yaml.

    With `shared_init=True`, the project gets the init outputs and manifest of the session's template
    for its init params (see `_copy_shared_init`): its init is then verified and skipped by the
    engine, as in a project where init already ran. For tests that run the stages but do not test
    init itself (that it runs, what it writes, that a stage refuses without it).
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "config", dest / "config", dirs_exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = _merge(params, FAST)
    if mlflow_db is not None:
        params = _merge(params, {"mlflow": {"tracking_uri": f"sqlite:///{mlflow_db}"}})
    params = _merge(params, overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if shared_init:
        _copy_shared_init(dest / "params.yaml")
    return dest / "params.yaml"


# Set by the session fixture below: where init templates are built (None outside a pytest session).
_SESSION_TMP: pytest.TempPathFactory | None = None
_INIT_TEMPLATES: dict[str, Path] = {}  # init fingerprint -> a project on which init ran


@pytest.fixture(scope="session", autouse=True)
def _shared_init_home(tmp_path_factory):
    """Only records the session's temp folder; a template is built the first time it is needed."""
    global _SESSION_TMP
    _SESSION_TMP = tmp_path_factory
    yield
    _SESSION_TMP = None
    _INIT_TEMPLATES.clear()


def _init_template(params_file: Path, wanted: str) -> Path:
    """The session's project on which init ran with the init params of `params_file` (fingerprint
    `wanted`), built on first use. init runs in a process of its own: the test that happens to ask
    first keeps its torch/RNG/env state and monkeypatches, and a spy it set up (decoded_images) does
    not see init's work. init is byte-deterministic across processes
    (tests/integration/test_init_deterministic.py), so a copy holds what init would write."""
    import subprocess

    from kontext_core.stages import read_manifest

    if wanted in _INIT_TEMPLATES:
        return _INIT_TEMPLATES[wanted]
    assert _SESSION_TMP is not None
    project = _SESSION_TMP.mktemp("init-template") / "project"
    shutil.copytree(ROOT / "config", project / "config")
    # The project's params, less what points outside init (its MLflow store, its own dataset file).
    params = yaml.safe_load(params_file.read_text())
    root = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in ("mlflow", "data_backend_config"):
        params[key] = root[key]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {key: value for key, value in os.environ.items() if not key.startswith("KONTEXT_TEST_")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom kontext_core.stages import run_stage\nrun_stage('init', sys.argv[1])",
            str(project / "params.yaml"),
        ],
        cwd=project,
        env={**env, "PYTHONPATH": str(ROOT), "KONTEXT_PROGRESS": "off"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"shared init template: init failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    manifest = read_manifest(project, "init")
    assert manifest is not None and manifest["fingerprint"] == wanted, "the init template has another fingerprint"
    _INIT_TEMPLATES[wanted] = project
    return project


def _copy_shared_init(params_file: Path) -> None:
    """Copy the template's init outputs and manifest (the same init fingerprint: same init params and
    code) into the project of `params_file`, which must have no init outputs yet."""
    from kontext_core.config import load_params
    from kontext_core.stages import STAGES, fingerprint
    from kontext_core.stages.engine import manifest_path

    if _SESSION_TMP is None:
        return  # outside a pytest session: the project's init runs as usual
    project = params_file.parent
    outs = STAGES["init"].all_outs()
    if manifest_path(project, "init").exists() or any((project / rel).exists() for rel in outs):
        raise RuntimeError(f"shared_init: {project} already has init outputs")
    template = _init_template(params_file, fingerprint("init", load_params(params_file), project).value)
    for rel in outs:
        shutil.copytree(template / rel, project / rel)
    manifest_path(project, "init").parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(manifest_path(template, "init"), manifest_path(project, "init"))


def write_params(params_file: Path, **overrides) -> None:
    params = yaml.safe_load(params_file.read_text())
    params_file.write_text(yaml.safe_dump(_merge(params, overrides), sort_keys=False))


def fetched_records(project: Path) -> dict:
    """What fetch wrote under data/fetch: {"records": {dataset id: [record dicts]}, "problems": [...]}."""
    from kontext_core.data.record_table import RecordTable

    table = RecordTable(project / "data/fetch/records.jsonl", project / "data/fetch/summary.json")
    records = {key: [record.to_dict() for record in value] for key, value in table.lists().items()}
    return {"records": records, "problems": [problem.to_dict() for problem in table.problems]}


@pytest.fixture(autouse=True)
def _isolate_mlflow_env():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; keep one test's store out of the next.

    `use_store` (kontext_core.tracking.store) also sets mlflow's process-wide registry URI: left
    behind, a later test's `MlflowClient(tracking_uri=its_store)` would read another project's
    registry (it takes the global registry URI before its own tracking URI). Unset, the registry
    follows each client's tracking URI.
    """
    yield
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(key, None)
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_registry_uri(None)


def _rebind_closed_log_streams() -> None:
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in list(getattr(logger, "handlers", [])):
            console = getattr(handler, "console", None)  # rich (Prefect's console handler)
            if console is not None and getattr(console.file, "closed", False):
                console.file = sys.stderr
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and getattr(stream, "closed", False):
                handler.stream = sys.stderr  # not setStream: it flushes the closed stream first


@pytest.fixture(autouse=True)
def _no_log_handler_on_a_closed_stream():
    """A CliRunner or capture stream is closed when its test ends, but a handler set up meanwhile
    (Prefect's console handler, a library's default handler) keeps writing there: a later warning
    would print a "--- Logging error ---" traceback into another test's output. Such handlers go
    back to the current stderr, before and after each test."""
    _rebind_closed_log_streams()
    yield
    _rebind_closed_log_streams()


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """One migrated SQLite store (creating one runs migrations for seconds); tests copy it."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_db(tmp_path, mlflow_template) -> Path:
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, db)
    return db


@pytest.fixture(scope="session")
def demo_init(tmp_path_factory, mlflow_template):
    """The init stage run once on the shipped params.yaml: the demo's pretraining takes a minute.
    Returns `copy_into(project)`, which copies its outputs and manifest into
    a project, as a copied project has them; that project's init is then verified and skipped when its
    parameters give the same fingerprint (what a test using it asserts), and run again otherwise."""
    from kontext_core.stages import MANIFEST_DIR, SAMPLE_DATA_DIR, TINY_MODEL_DIR, run_stage

    source = tmp_path_factory.mktemp("demo-init")
    shutil.copytree(ROOT / "config", source / "config")
    shutil.copy(ROOT / "params.yaml", source / "params.yaml")
    run_stage("init", source / "params.yaml")

    def copy_into(project: Path) -> None:
        for rel in (TINY_MODEL_DIR, SAMPLE_DATA_DIR):
            shutil.copytree(source / rel, project / rel)
        (project / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy(source / MANIFEST_DIR / "init.json", project / MANIFEST_DIR / "init.json")

    return copy_into


@pytest.fixture(scope="session")
def built_project(tmp_path_factory, mlflow_template) -> Path:
    """A project on which every stage has run once, in order, without an orchestrator."""
    from kontext_core.stages import STAGE_ORDER, run_stage

    project = tmp_path_factory.mktemp("built")
    db = project / "mlflow.db"
    shutil.copy(mlflow_template, db)
    params_file = make_project(project, mlflow_db=db, shared_init=True)
    for name in STAGE_ORDER:
        run_stage(name, params_file)
    return project


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def prefect_api_env(prefect_harness) -> dict[str, str]:
    """The environment that points a subprocess at the session's Prefect API (the harness's server on
    127.0.0.1): a `kontext run` started with it records its flow run there instead of starting an
    ephemeral server of its own (~15 s each). Not for a test about that ephemeral server or its
    database in the project's PREFECT_HOME."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value()}


@pytest.fixture
def decoded_images(monkeypatch) -> list:
    """Every PIL image whose pixels get decoded while the test runs (header reads do not count)."""
    from PIL import Image, ImageFile

    decoded: list = []

    def spy(real):
        def load(self):
            decoded.append(self)
            return real(self)

        return load

    monkeypatch.setattr(Image.Image, "load", spy(Image.Image.load))
    monkeypatch.setattr(ImageFile.ImageFile, "load", spy(ImageFile.ImageFile.load))
    return decoded


SERVER_MARK = "prefect_server"


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: every worker sorts alike
        _long_files_first(items)
    _server_tests_apart(config, items)


def _server_tests_apart(config, items) -> None:
    """Tests against a real `prefect server start` run in a pytest process of their own (`make test`
    starts it; `pytest -m prefect_server` selects them): Prefect's clients and event workers are
    per process, and the other tests point them at the session's ephemeral API first."""
    if SERVER_MARK in (config.getoption("markexpr") or ""):
        return  # -m chose them (or chose against them) explicitly
    server = [item for item in items if item.get_closest_marker(SERVER_MARK)]
    if not server or len(server) == len(items):
        return
    config.hook.pytest_deselected(items=server)
    items[:] = [item for item in items if not item.get_closest_marker(SERVER_MARK)]
    config._kontext_server_tests_deselected = len(server)


# The files that take longest (measured on CI's two cores, `--durations`), longest first. Under
# pytest-xdist with `--dist loadfile` a worker takes the next file in collection order when it is
# free: these start first, and the many short files fill the gaps at the end, so that both workers
# finish together instead of one waiting for a long file handed out last.
LONG_FILES = (
    "tests/e2e/test_dvc.py",
    "tests/e2e/test_demo_edit.py",
    "tests/s3/test_team.py",
    "tests/reliability/test_kill.py",
    "tests/unit/test_gpu_bench.py",
    "tests/e2e/test_simpletuner_example.py",
    "tests/e2e/test_hub_replica.py",
    "tests/e2e/test_reproduce.py",
    "tests/integration/test_bench_smoke.py",
    "tests/reliability/test_stop.py",
    "tests/integration/test_train_stage.py",
    "tests/unit/test_quantize.py",
    "tests/unit/test_quantize_streaming.py",
    "tests/integration/test_init_deterministic.py",
    "tests/integration/test_champion.py",
    "tests/e2e/test_dvc_deps.py",
)


def _long_files_first(items: list) -> None:
    """Reorder whole files (a file's own order is kept: its tests may follow each other)."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    position = {}
    for index, item in enumerate(items):
        position.setdefault(item.nodeid.split("::")[0], index)

    def key(item) -> tuple[int, int]:
        file = item.nodeid.split("::")[0]
        return rank.get(file, len(rank)), position[file]

    items.sort(key=key)


def pytest_terminal_summary(terminalreporter, config):
    count = getattr(config, "_kontext_server_tests_deselected", 0)
    if count:
        terminalreporter.write_line(
            f"{count} {SERVER_MARK} tests left for their own process: pytest -m {SERVER_MARK} (make test runs it)"
        )
