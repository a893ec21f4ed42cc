"""The `kontext` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import typer

from kontext_core.config import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="FLUX.1 Kontext LoRA pipeline.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect and check the configuration.")
app.add_typer(config_app, name="config")

ParamsOption = typer.Option(Path("params.yaml"), "--params", "-p", help="the parameter file")


def _setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("KONTEXT_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from kontext_core.progress import quiet_library_bars

    quiet_library_bars()
    # A fresh ephemeral Prefect server migrates its database first: slow on a 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command("init-model")
def init_model(
    kind: str = typer.Argument("tiny", help="only 'tiny' (random weights, real geometry) is built offline"),
    out: Path = typer.Option(Path("models/tiny-kontext"), "--out"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Build a randomly initialised FLUX.1 Kontext pipeline and save it in diffusers format."""
    _setup_logging()
    if kind != "tiny":
        _fail(f"init-model: unknown kind {kind!r}; allowed: tiny")
    from kontext_core.model.tiny import save_tiny_model

    typer.echo(str(save_tiny_model(out, seed=seed)))


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


def _check_registered_kinds(params, datasets, project: Path) -> None:
    """The checks that belong to a dataset backend or an adapter kind, all problems at once."""
    from kontext_core.data.backends import entry_problems
    from kontext_core.model.adapter_kinds import kind_for

    problems = entry_problems(datasets, project)
    try:
        kind_for(params)
    except ConfigError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))


@config_app.command("check")
def config_check(params: Path = ParamsOption) -> None:
    """Validate params.yaml and the dataset file it names; print the resolved config."""
    from kontext_core.config import load_all

    try:
        resolved, datasets = load_all(params)
        _check_registered_kinds(resolved, datasets, params.resolve().parent)
    except ConfigError as exc:
        _fail(str(exc))
    typer.echo(
        json.dumps(
            {
                "params": resolved.model_dump(),
                "datasets": [e.model_dump(exclude_defaults=True) for e in datasets.entries],
            },
            indent=2,
        )
    )


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
    try:
        manifest = run_stage(name, params, force=force)
    except ConfigError as exc:
        _fail(str(exc))
    typer.echo(f"{name}: {'up to date' if manifest['skipped'] else 'done'} ({manifest['fingerprint'][:12]})")


@app.command("run")
def run(params: Path = ParamsOption) -> None:
    """Run the whole `kontext-train` flow (ephemeral Prefect server unless PREFECT_API_URL is set)."""
    _setup_logging()
    from kontext_core.config import load_params

    params = params.resolve()
    try:
        load_params(params)
    except ConfigError as exc:
        _fail(str(exc))
    from flows.train_flow import kontext_train

    try:
        result = kontext_train(params_file=str(params))
    except ConfigError as exc:
        _fail(str(exc))
    from flows.summary import summary_lines

    for line in summary_lines(result):
        typer.echo(line)
    ran = [n for n, s in result["stages"].items() if s == "ran"]
    typer.echo(f"stages run: {', '.join(ran) or 'none (all up to date)'}")
    typer.echo(f"MLflow run: {result['mlflow_run_id']}")
    typer.echo(f"registered model: {result['model_uri']}")
    if result["alias_uri"]:
        typer.echo(f"champion: {result['alias_uri']}")


@app.command("serve")
def serve(params: Path = ParamsOption) -> None:
    """Serve the flow with the cron schedule of params.yaml; trigger runs from the Prefect UI."""
    _setup_logging()
    from prefect import serve as prefect_serve

    from flows.deployments import build_deployment

    try:
        deployment = build_deployment(params)
    except ConfigError as exc:
        _fail(str(exc))
    prefect_serve(deployment)


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

    resolved = load_params(params) if params.exists() else None
    try:
        path = run_edit(model, image, prompt, out, resolved, params.resolve().parent, steps, guidance, seed, base_model)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(str(path))


@app.command("dvc-yaml")
def dvc_yaml(
    out: Path = typer.Option(Path("dvc.yaml"), "--out"),
    check: bool = typer.Option(False, "--check", help="exit 1 if the file differs from the stages"),
) -> None:
    """Write dvc.yaml from the stage registry (or check that it is current)."""
    from kontext_core.dvc_yaml import render

    text = render()
    if check:
        if not out.exists() or out.read_text() != text:
            typer.echo(f"{out} is out of date; run `kontext dvc-yaml`", err=True)
            raise typer.Exit(1)
        return
    out.write_text(text)
    typer.echo(str(out))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
