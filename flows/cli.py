"""The `kontext` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from kontext_core.config import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="FLUX.1 Kontext LoRA pipeline.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect and check the configuration.")
app.add_typer(config_app, name="config")

ParamsOption = typer.Option(Path("params.yaml"), "--params", "-p", help="the parameter file")

# Set by `main()` (the `kontext` program), not when a test calls the app in its own process: only a
# program of its own may take a process group and a watchdog (kontext_core.lifecycle).
_AS_PROGRAM = False


def _contain_children() -> None:
    if _AS_PROGRAM:
        from kontext_core.lifecycle import contain_children

        contain_children()


def _setup_logging(quiet_bars: bool = True) -> None:
    """Log format and levels; with `quiet_bars`, the libraries' own bars switched off (which imports
    torch, transformers and diffusers: a command that may need none of them passes False, and calls
    `quiet_library_bars` itself before it loads them)."""
    logging.basicConfig(level=os.environ.get("KONTEXT_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet_bars:
        from kontext_core.progress import quiet_library_bars

        quiet_library_bars()
    # A fresh ephemeral Prefect server migrates its database first: slow on a 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _fail(message: str) -> None:
    # One line per problem: a ConfigError carries every problem of a config, joined by newlines.
    for line in str(message).splitlines() or [""]:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


# Failures the pipeline expects end in their message: a bad config, or a RuntimeError or missing
# file that the project's own code raises on purpose (a stage that refuses to go on, such as the
# pre-flight check). A RuntimeError from inside torch or a library is a bug: it keeps its traceback.
PROJECT_DIRS = tuple(Path(__file__).resolve().parents[1] / name for name in ("kontext_core", "flows", "tasks"))


def _raised_by_the_project(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    where = Path(tb.tb_frame.f_code.co_filename).resolve()
    return any(where.is_relative_to(folder) for folder in PROJECT_DIRS)


def _expected(exc: BaseException) -> bool:
    return isinstance(exc, ConfigError) or (
        isinstance(exc, (RuntimeError, FileNotFoundError)) and _raised_by_the_project(exc)
    )


@contextmanager
def _config_warnings() -> Iterator[list[str]]:
    """The config loader's notes (mapped keys) and warnings (keys not applicable here)."""
    found: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kind = "warning" if record.levelno >= logging.WARNING else "note"
            found.append(f"{kind}: {record.getMessage()}")

    logger = logging.getLogger("kontext_core.config")
    handler = _Collect(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextmanager
def _one_line_failures() -> Iterator[None]:
    from kontext_core.fsutil import storage_failure
    from kontext_core.lifecycle import StopRequested

    try:
        yield
    except typer.Exit:  # a RuntimeError to Python: an exit code chosen already, not a failure
        raise
    except StopRequested as exc:
        # 128 + the signal's number, as a shell reports a process a signal ended.
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(143 if exc.signal_name == "SIGTERM" else 130) from None
    except (ConfigError, RuntimeError, FileNotFoundError, OSError) as exc:
        if os.environ.get("KONTEXT_DEBUG") == "1":
            raise
        if not _expected(exc):
            found = storage_failure(exc) if isinstance(exc, OSError) else None
            if found is None:
                raise
            what, filename = found
            _fail(f"{what}: {filename or 'a file of the project'}")
        _fail(str(exc))


@contextmanager
def _stopped_flow_is_one_line() -> Iterator[None]:
    """A flow a stop signal cancelled (flows/lifecycle.py) raises Prefect's CancelledRun with the stop's
    line as its message: that line, and the exit code of the signal."""
    from prefect.exceptions import CancelledRun

    from kontext_core.lifecycle import stop_signal

    try:
        yield
    except CancelledRun as exc:
        name = stop_signal()
        if name is None:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(143 if name == "SIGTERM" else 130) from None


@contextmanager
def _quiet_expected_prefect_failures() -> Iterator[None]:
    """Prefect logs a failing flow's and task's traceback before the command can print its one-line
    error; for an expected failure (see `_expected`) its log lines keep the message, not the traceback."""

    class _NoTraceback(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            if exc is not None and _expected(exc) and os.environ.get("KONTEXT_DEBUG") != "1":
                record.exc_info = None
                record.exc_text = None
                # "Finished in state Failed(...)" repeats the error: the one-line error says it.
                return False
            return True

    handlers = {
        h
        for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs")
        for h in logging.getLogger(name).handlers
    }
    quiet = _NoTraceback()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


@app.command("init-model")
def init_model(
    kind: str = typer.Argument(
        "tiny",
        help="'tiny' (random weights, real geometry, small widths) or 'replica' (FLUX.1 Kontext [dev]'s "
        "hub layout and configs, random weights, fewer blocks)",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="folder to write (tiny: models/tiny-kontext; replica: models/kontext-replica)"
    ),
    seed: int = typer.Option(0, "--seed"),
    width: str = typer.Option(
        "small", "--width", help="replica: 'small' (tiny widths, for tests) or 'real' (the real hidden sizes)"
    ),
    double_blocks: int = typer.Option(1, "--double-blocks", help="replica: double-stream blocks (real: 19)"),
    single_blocks: int = typer.Option(2, "--single-blocks", help="replica: single-stream blocks (real: 38)"),
    t5_layers: int = typer.Option(1, "--t5-layers", help="replica: T5 encoder layers (real: 24)"),
    hub_cache: Path | None = typer.Option(
        None,
        "--hub-cache",
        help="replica: write it into this HF_HOME's hub cache as black-forest-labs/FLUX.1-Kontext-dev "
        "(blobs/, snapshots/<commit>/, refs/main) instead of a plain folder; prints the commit",
    ),
    dataset: bool = typer.Option(
        False,
        "--dataset",
        help="replica with --hub-cache: also write a Subjects200K-shaped dataset there as Yuanshi/Subjects200K",
    ),
) -> None:
    """Build a randomly initialised FLUX.1 Kontext pipeline and save it in diffusers format."""
    _setup_logging()
    if kind == "tiny":
        from kontext_core.model.tiny import save_tiny_model

        typer.echo(str(save_tiny_model(out or Path("models/tiny-kontext"), seed=seed)))
        return
    if kind != "replica":
        _fail(f"init-model: unknown kind {kind!r}; allowed: tiny, replica")
    from kontext_core.model.replica import WIDTHS, write_hub_cache, write_replica

    if width not in WIDTHS:
        _fail(f"init-model --width: {width!r} is not one of {', '.join(WIDTHS)}")
    if hub_cache is not None and out is not None:
        _fail("init-model: give --out (a plain folder) or --hub-cache (an HF_HOME), not both")
    shape = dict(width=width, double_blocks=double_blocks, single_blocks=single_blocks, t5_layers=t5_layers, seed=seed)
    try:
        if hub_cache is not None:
            typer.echo(write_hub_cache(hub_cache, **shape))
            if dataset:
                from kontext_core.data.subjects_replica import SUBJECTS_REPO, write_subjects_hub_cache

                typer.echo(f"{SUBJECTS_REPO} {write_subjects_hub_cache(hub_cache, seed=seed)}")
        elif dataset:
            _fail("init-model --dataset: needs --hub-cache (the dataset is written as a hub dataset)")
        else:
            typer.echo(str(write_replica(out or Path("models/kontext-replica"), **shape)))
    except ValueError as exc:
        _fail(str(exc))


@app.command("sample-data")
def sample_data(
    out: Path = typer.Option(Path("data/samples"), "--out"),
    count: int = typer.Option(8, "--count"),
    size: int = typer.Option(96, "--size"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate the demo datasets (Subjects200K-shaped parquet, folder pairs, clean images)."""
    _setup_logging()
    from kontext_core.data.samples import write_sample_data

    typer.echo(str(write_sample_data(out, count=count, size=size, seed=seed)))


@config_app.command("check")
def config_check(params: Path = ParamsOption) -> None:
    """Validate params.yaml and the dataset file it names; print the resolved config."""
    from kontext_core.config import load_all
    from kontext_core.stages.datasets import registered_kind_problems

    with _config_warnings() as warnings, _one_line_failures():
        resolved, datasets = load_all(params, extra_checks=registered_kind_problems)
    for line in warnings:
        typer.echo(line, err=True)
    typer.echo(
        json.dumps(
            {
                # JSON mode: a SecretStr (an `aws` entry's keys) prints masked, as "**********".
                "params": resolved.model_dump(mode="json"),
                "datasets": [e.model_dump(mode="json", exclude_defaults=True) for e in datasets.entries],
            },
            indent=2,
        )
    )


@config_app.command("import-simpletuner")
def import_simpletuner(
    config_json: Path = typer.Argument(..., exists=True, dir_okay=False, help="SimpleTuner's config.json"),
    out: Path | None = typer.Option(None, "--out", help="write here instead of printing"),
) -> None:
    """Write the params.yaml equivalent of a SimpleTuner config.json, a comment on each key."""
    from kontext_core.config.importer import render_params_yaml

    # The output's comments say what each key does here: no separate warning.
    with _config_warnings(), _one_line_failures():
        text = render_params_yaml(config_json)
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text)
    typer.echo(str(out))


@config_app.command("export-simpletuner")
def export_simpletuner(
    params: Path = ParamsOption,
    out: Path = typer.Option(Path("simpletuner"), "--out", help="folder for config.json and multidatabackend.json"),
) -> None:
    """Write SimpleTuner's config.json and multidatabackend.json for this project's config."""
    from kontext_core.config import load_all
    from kontext_core.config.exporter import export_simpletuner as export
    from kontext_core.fsutil import write_json

    with _config_warnings(), _one_line_failures():
        resolved, datasets = load_all(params)
        config, entries, notes = export(resolved, datasets, str(out / "multidatabackend.json"))
    for line in notes:
        typer.echo(f"note: {line}", err=True)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in (("multidatabackend.json", entries), ("config.json", config)):
        write_json(out / name, content)
        typer.echo(str(out / name))


@app.command("stage")
def stage(
    name: str = typer.Argument(..., help="stage name"),
    params: Path = ParamsOption,
    force: bool = typer.Option(False, "--force", help="run even when up to date"),
) -> None:
    """Run one pipeline stage alone (what dvc.yaml calls)."""
    _setup_logging()
    from kontext_core.stages import STAGES, run_stage

    if name not in STAGES:
        _fail(f"stage: unknown stage {name!r}; allowed: {', '.join(STAGES)}")
    from kontext_core.lifecycle import StopRequested, stop_on_signals
    from kontext_core.run import build_run

    _contain_children()
    run_ = None
    with _one_line_failures(), stop_on_signals():
        try:
            # The run, built once (no run settings; the pre-flight checks are the stage's own).
            run_ = build_run(params, check=False)
            manifest = run_stage(name, workdir=run_.project, params=run_.params, force=force)
        except BaseException as exc:
            # The pipeline run this stage logged into must not stay RUNNING (DVC runs one process per stage).
            from kontext_core.tracking.open_runs import fail_open

            stopped = isinstance(exc, StopRequested | KeyboardInterrupt)
            reason = f"stage {name}: {type(exc).__name__}: {exc}"
            status = "KILLED" if stopped else "FAILED"
            fail_open(params.resolve().parent, reason, run_.params if run_ else params, status=status)
            raise
    typer.echo(f"{name}: {'up to date' if manifest['skipped'] else 'done'} ({manifest['fingerprint'][:12]})")


@app.command("run")
def run(
    params: Path = ParamsOption,
    dvc_commit: bool = typer.Option(
        True, "--dvc-commit/--no-dvc-commit", help="in a DVC repository, record the results in dvc.lock"
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        help="a run setting over the params file, KEY=VALUE (repeatable): the fields of the Prefect UI's form",
    ),
    force_flow: bool = typer.Option(
        False,
        "--force-flow",
        help="start the Prefect flow (and its run record) even when every stage is up to date",
    ),
) -> None:
    """Run the whole `kontext-train` flow (ephemeral Prefect server unless PREFECT_API_URL is set).

    When every stage is up to date it starts neither Prefect nor MLflow: it says so and prints the
    summary of the stages' last runs."""
    _setup_logging(quiet_bars=False)  # the up-to-date check needs no ML library
    from kontext_core.config.overrides import parse_assignments
    from kontext_core.run import build_run

    params = params.resolve()
    with _one_line_failures():
        # The run, built once here: the flow takes it as it is (flows.train_flow.handing_over).
        run_ = build_run(params, settings=_run_settings(parse_assignments(overrides)))
    from kontext_core.dvc_lock import NO_COMMIT_ENV
    from kontext_core.project_lock import project_lock

    _contain_children()
    # The lock is taken before anything is checked or started, so a second run refuses in one line; the
    # flow takes it again (re-entrant) for runs that do not come through this command.
    with _one_line_failures(), project_lock(run_.project):
        if not force_flow:
            run_ = _walked(run_)
        result = None if force_flow else _up_to_date_result(run_)
        if result is None:
            from flows.train_flow import handing_over, kontext_train
            from kontext_core.progress import quiet_library_bars

            quiet_library_bars()
            saved = os.environ.get(NO_COMMIT_ENV)
            if not dvc_commit:
                os.environ[NO_COMMIT_ENV] = "1"
            try:
                with _quiet_expected_prefect_failures(), _stopped_flow_is_one_line(), handing_over(run_):
                    result = kontext_train(params_file=str(run_.params_path), settings=run_.settings)
            finally:
                if saved is None:
                    os.environ.pop(NO_COMMIT_ENV, None)
                else:
                    os.environ[NO_COMMIT_ENV] = saved
    from flows.summary import summary_lines

    for line in summary_lines(result):
        typer.echo(line)
    ran = [n for n, s in result["stages"].items() if s == "ran"]
    typer.echo(f"stages run: {', '.join(ran) or 'none (all up to date)'}")
    typer.echo(f"MLflow run: {result['mlflow_run_id']}")
    typer.echo(f"registered model: {result['model_uri']}")
    if result.get("reason"):
        typer.echo(f"decision: {result['decision']}: {result['reason']}")
    if result["alias_uri"]:
        typer.echo(f"champion: {result['alias_uri']}")
    if result.get("fast_path"):
        typer.echo("up to date: nothing ran (no Prefect or MLflow run started)")
    workspace = result.get("workspace") or {}
    if result.get("fast_path") and dvc_commit:
        # No flow ran: the outputs are the ones dvc.lock should already name; record them in any case.
        from kontext_core.dvc_lock import workspace_after_run

        registration = {"model_uri": result.get("model_uri"), "became_champion": bool(result.get("alias_uri"))}
        workspace = workspace_after_run(run_.project, run_.params_path, run_.overrides, registration)
    for line in (workspace.get("dvc_lock"), workspace.get("workspace")):
        if line:
            typer.echo(line)


def _run_settings(values: dict[str, Any]) -> Any:
    """`--set` values as the flows' settings model (flows.form.RunSettings), checked once; no Prefect import."""
    from flows.form import run_settings

    return run_settings(values)


def _walked(run: Any) -> Any:
    """The run with its one up-to-date walk, taken holding the project lock after clearing what
    interrupted runs left (as the flow does); the flow reuses the walk instead of taking it again."""
    from kontext_core.lifecycle import clean_leftovers
    from kontext_core.stages.registry import prepare_datasets

    clean_leftovers(run.project)
    prepare_datasets(run.params, run.project)
    return run.walked()


def _up_to_date_result(run: Any) -> dict[str, Any] | None:
    """The run's result when its walk found every stage up to date, taken without Prefect or MLflow; else None.

    The walk asks each stage the engine's own question (kontext_core.stages.uptodate), so this skips
    exactly when every stage would skip; anything else, including an error, takes the flow's path.
    """
    from flows.summary import pipeline_result, registered_run_id

    manifests = run.stored_manifests()
    if manifests is None:
        return None
    try:
        run_id = registered_run_id(run.project)
    except (OSError, ValueError, KeyError):
        return None
    for manifest in manifests.values():
        manifest["prefect_state"] = None
    result = pipeline_result(manifests, run.params.registry.metric, run_id=run_id, reused=True, overrides=run.overrides)
    result["fast_path"] = True
    return result


@app.command("serve")
def serve(params: Path = ParamsOption) -> None:
    """Serve the flow with the cron schedule of params.yaml; trigger runs from the Prefect UI."""
    _setup_logging()
    from prefect import serve as prefect_serve

    from flows.deployments import build_deployment, build_reproduce_deployment, build_watch_deployment

    with _one_line_failures():
        deployment = build_deployment(params)
    prefect_serve(deployment, build_watch_deployment(params), build_reproduce_deployment(params))


@app.command("serve-model")
def serve_model_cmd(
    model: str = typer.Option("models:/kontext-lora@champion", "--model", help="models:/ or runs:/ URI"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(5001, "--port"),
    workers: int = typer.Option(1, "--workers", help="uvicorn workers (each loads the model)"),
    params: Path = ParamsOption,
) -> None:
    """Serve a registered version over REST (stock `mlflow models serve`, POST /invocations); Ctrl-C or
    SIGTERM stops the server and every process it started."""
    _setup_logging(quiet_bars=False)
    from kontext_core.config import load_params
    from kontext_core.tracking.runs import open_store, tracking_uri
    from kontext_core.tracking.serving import serve_model, server_environment

    if not model.startswith(("models:/", "runs:/")):
        _fail(f"--model {model}: expected a models:/ or runs:/ URI")
    with _one_line_failures():
        resolved = load_params(params)
    project = params.resolve().parent
    open_store(resolved, project)  # a moved project's artifact locations follow it before the server reads them
    env = server_environment(tracking_uri(resolved, project), project)
    raise typer.Exit(serve_model(model, host, port, env, workers))


@app.command("edit")
def edit(
    image: Path = typer.Option(..., "--image", exists=True, dir_okay=False),
    prompt: str = typer.Option(..., "--prompt"),
    out: Path = typer.Option(Path("edited.png"), "--out"),
    model: str = typer.Option(
        "models:/kontext-lora@champion", "--model", help="models:/ URI, runs:/ URI or adapter folder"
    ),
    params: Path = ParamsOption,
    steps: int | None = typer.Option(None, "--steps"),
    guidance: float | None = typer.Option(None, "--guidance"),
    seed: int = typer.Option(0, "--seed"),
    base_model: str | None = typer.Option(None, "--base-model", help="override the base model"),
) -> None:
    """Edit an image with the base model plus a trained adapter."""
    _setup_logging()
    from kontext_core.config import load_params
    from kontext_core.inference import run_edit

    with _one_line_failures():
        resolved = load_params(params) if params.exists() else None
    try:
        path = run_edit(model, image, prompt, out, resolved, params.resolve().parent, steps, guidance, seed, base_model)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(str(path))


@app.command("reproduce")
def reproduce_cmd(
    model_uri: str = typer.Argument(..., help="models:/name@alias, models:/name/N or runs:/RUN_ID"),
    workdir: Path | None = typer.Option(None, "--workdir", help="check out here (kept) instead of a temp dir"),
    params: Path = ParamsOption,
) -> None:
    """Rebuild a registered adapter from its lineage: identical, different, or cannot reproduce."""
    _setup_logging()
    from kontext_core.reproduce import IDENTICAL, reproduce

    try:
        verdict = reproduce(model_uri, params, workdir)
    except ConfigError as exc:
        _fail(str(exc))
    for line in verdict.lines():
        typer.echo(line)
    # Scripts and CI can branch on it: 0 identical, 1 different or cannot reproduce.
    raise typer.Exit(0 if verdict.answer == IDENTICAL else 1)


EXPORT_FORMATS = {
    "kohya": "one .safetensors file in the kohya layout ComfyUI and most UIs read (alpha included)",
    "hub": "a folder for the Hugging Face hub: the adapter in diffusers layout, README.md model card, images/",
}


@app.command("export")
def export(
    model: str = typer.Option(..., "--model", help="adapter folder or file, or a models:/ or runs:/ URI"),
    fmt: str = typer.Option("kohya", "--format", help="; ".join(f"{k}: {v}" for k, v in EXPORT_FORMATS.items())),
    out: Path | None = typer.Option(
        None, "--out", help="kohya: the file (kontext_lora_kohya.safetensors); hub: the folder (hub/)"
    ),
    params: Path = ParamsOption,
) -> None:
    """Write an adapter in another tool's layout."""
    _setup_logging()
    import tempfile

    from kontext_core.model.export import KOHYA_FILE, export_kohya
    from kontext_core.tracking.model_card import export_hub

    if fmt not in EXPORT_FORMATS:
        _fail(f"export: unknown format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    out = out or Path(KOHYA_FILE if fmt == "kohya" else "hub")
    try:
        if model.startswith(("models:/", "runs:/")):
            from kontext_core.config import load_params
            from kontext_core.tracking.registry import download_version
            from kontext_core.tracking.runs import open_store

            if params.exists():
                open_store(load_params(params), params.resolve().parent)
            with tempfile.TemporaryDirectory(prefix="kontext-export-") as tmp:
                adapter, card = download_version(model, Path(tmp))
                path = export_kohya(adapter, out) if fmt == "kohya" else export_hub(adapter, out, card, model)
        else:
            if not Path(model).exists():
                _fail(f"--model {model}: no such adapter file or folder (or use a models:/ URI)")
            if fmt == "kohya":
                path = export_kohya(Path(model), out)
            else:
                from kontext_core.config import load_params

                with _one_line_failures():
                    resolved = load_params(params)
                path = export_hub(Path(model), out, None, model, resolved, params.resolve().parent)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(str(path))


@app.command("plots")
def plots(
    out: Path = typer.Option(Path("dvc_plots/offline.html"), "--out"),
    params: Path = ParamsOption,
) -> None:
    """Write the stages' plots (train loss, eval loss by timestep) as one HTML page that renders offline."""
    from kontext_core.stages import STAGES
    from kontext_core.tracking.plots_view import write_page

    declared = [
        (path, spec.plot_axes.get(path, {}).get("x", "step")) for spec in STAGES.values() for path in spec.plots
    ]
    typer.echo(str(write_page(params.resolve().parent, declared, out)))


@app.command("verify")
def verify(
    params: Path = ParamsOption,
    quick: bool = typer.Option(False, "--quick", help="sizes and safetensors headers only, no content hashes"),
) -> None:
    """Check every stage's recorded outputs (and the cache entries) against their manifests; name each
    damaged file. Exit 1 when something is damaged: the next run re-runs the stages concerned."""
    _setup_logging()
    from kontext_core.stages.engine import MANIFEST_DIR
    from kontext_core.stages.verify import verify_project

    project = params.resolve().parent
    with _one_line_failures():
        report = verify_project(project, deep=not quick)
    for stage_name, problems in report.items():
        for problem in problems:
            typer.echo(f"damaged: {stage_name}: {problem}")
    if not report:
        _fail(f"verify: no stage has run in {project.name}/ (no {MANIFEST_DIR}/*.json): nothing to check")
    checked = ", ".join(report)
    damaged = sum(len(p) for p in report.values())
    typer.echo(f"checked stages: {checked}; damaged files: {damaged}")
    if damaged:
        raise typer.Exit(1)


@app.command("dvc-yaml")
def dvc_yaml(
    out: Path = typer.Option(Path("dvc.yaml"), "--out"),
    check: bool = typer.Option(False, "--check", help="exit 1 if the file differs from the stages"),
) -> None:
    """Write dvc.yaml from the stage registry, params.yaml and the dataset file beside it (or check it)."""
    from kontext_core.dvc_yaml import render

    try:
        text = render(out.resolve().parent)
    except ConfigError as exc:
        _fail(str(exc))
    if check:
        if not out.exists() or out.read_text() != text:
            typer.echo(f"{out} is out of date; run `kontext dvc-yaml`", err=True)
            raise typer.Exit(1)
        return
    out.write_text(text)
    typer.echo(str(out))


def main() -> None:
    global _AS_PROGRAM
    _AS_PROGRAM = True
    app()


if __name__ == "__main__":
    sys.exit(main())
