"""Parse once: `learning_rate` from `kontext run --set` to the optimizer.

The real command runs in this process (the session's Prefect API, a temp MLflow store, every stage
in the flow). The test counts what happens on the way, without replacing any part of it:
- every `open` of the params file, seen by a Python audit hook (`sys.addaudithook`);
- every validation of the run settings (`RunOverrides`) and of the params (`Params`), seen by a
  counting wrapper around each model's own pydantic validator;
- the learning rate of every optimizer that takes a step, seen by torch's global optimizer hook.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from typer.testing import CliRunner

import flows.train_flow  # noqa: F401 - the flows' settings model (a subclass of RunOverrides) is defined
from flows.cli import app
from kontext_core.config import Params
from kontext_core.config.overrides import RunOverrides
from tests.conftest import make_project

pytestmark = pytest.mark.slow

LEARNING_RATE = 0.0123

# The audit hook stays for the rest of the process (Python cannot remove one): it does nothing unless a
# test has put a path here.
_WATCHED: dict[str, list[str]] = {}


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _WATCHED:
        return
    path = args[0]
    if isinstance(path, int):
        return
    path = os.fsdecode(path)
    if os.path.basename(path) not in {os.path.basename(p) for p in _WATCHED}:
        return
    full = os.path.realpath(path)
    if full in _WATCHED:
        _WATCHED[full].append(str(args[1]))


sys.addaudithook(_audit)


class _CountingValidator:
    """A model's pydantic-core validator that counts every validation it is asked for."""

    def __init__(self, real: Any, name: str, counts: Counter) -> None:
        self._real, self._name, self._counts = real, name, counts

    def __getattr__(self, attr: str) -> Any:
        found = getattr(self._real, attr)
        if attr.startswith("validate_"):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self._counts[self._name] += 1
                return found(*args, **kwargs)

            return counted
        return found


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


def test_learning_rate_is_read_once_validated_once_and_reaches_the_optimizer(
    tmp_path, mlflow_db, prefect_harness, monkeypatch
):
    params_file = make_project(tmp_path / "project", mlflow_db=mlflow_db, shared_init=True)
    watched = os.path.realpath(params_file)

    validations: Counter = Counter()
    # The run settings are RunOverrides or a subclass of it (the flows' form, RunSettings): each class has
    # its own validator, and all of them count as the settings'.
    counted = [(Params, "Params"), *((model, "RunOverrides") for model in (RunOverrides, *_subclasses(RunOverrides)))]
    for model, as_name in counted:
        validator = _CountingValidator(model.__pydantic_validator__, as_name, validations)
        monkeypatch.setattr(model, "__pydantic_validator__", validator)
    stepped: list[float] = []

    def seen(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        stepped.append(optimizer.defaults["lr"])

    hook = register_optimizer_step_pre_hook(seen)
    # Every logging of the params to MLflow, by either caller (the flow imported the function by name).
    import flows.train_flow as train_flow
    import kontext_core.tracking.lineage as lineage

    logged: list[str] = []
    real_log_params = lineage.log_params

    def counted_log_params(client: Any, run_id: str, params: Params) -> None:
        logged.append(run_id)
        real_log_params(client, run_id, params)

    monkeypatch.setattr(lineage, "log_params", counted_log_params)
    monkeypatch.setattr(train_flow, "log_params", counted_log_params)
    _WATCHED[watched] = []
    try:
        result = CliRunner().invoke(
            app, ["run", "--no-dvc-commit", "--params", str(params_file), "--set", f"learning_rate={LEARNING_RATE}"]
        )
        opens = list(_WATCHED[watched])
    finally:
        _WATCHED.clear()
        hook.remove()
    assert result.exit_code == 0, result.output
    assert "train " in result.stdout and "stages run:" in result.stdout

    # The optimizer trained with the value given on the command line, at every step.
    assert stepped and set(stepped) == {LEARNING_RATE}, stepped
    # The params file was opened once (by the command), and the settings and the params validated once
    # each: the flow, its tasks and the training loop took the run the command built.
    assert len(opens) == 1, opens
    assert validations == Counter({"RunOverrides": 1, "Params": 1}), validations
    # The params went to the flow run's MLflow run once, with the value given on the command line.
    run_id = result.stdout.split("MLflow run: ", 1)[1].split()[0]
    assert logged == [run_id], logged
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}").get_run(run_id)
    assert float(run.data.params["learning_rate"]) == LEARNING_RATE
    # What the run recorded is the same value.
    from kontext_core.stages.engine import read_manifest

    assert read_manifest(Path(params_file).parent, "train")["params"]["learning_rate"] == LEARNING_RATE
