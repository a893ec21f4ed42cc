"""The control panel's details: the form's choices, the deployment's defaults, links, log lines, tables."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import make_project


def test_lora_type_is_a_choice_of_the_registered_adapter_kinds_in_the_form():
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.callables import parameter_schema

    from flows.form import RunSettings
    from flows.train_flow import kontext_train

    schema = parameter_schema(kontext_train.fn).model_dump()
    field = schema["definitions"]["RunSettings"]["properties"]["lora_type"]
    choices = [option.get("enum") for option in field.get("anyOf", [field]) if option.get("enum")]
    assert choices == [["standard", "lycoris"]]
    # From the UI or the API the form arrives as JSON and is validated here, once.
    with pytest.raises(ParameterTypeError, match="lora_type"):
        kontext_train.validate_parameters({"settings": {"lora_type": "loha-ish"}})
    settings = kontext_train.validate_parameters({"settings": {"lora_type": "lycoris"}})["settings"]
    assert isinstance(settings, RunSettings) and settings.lora_type == "lycoris"
    # Settings already validated (what `kontext run` passes) go through as they are, not validated again.
    assert kontext_train.validate_parameters({"settings": settings})["settings"] is settings


def test_deployments_name_the_params_file_relative_to_where_they_are_served(tmp_path, monkeypatch):
    from flows.deployments import build_deployment, build_reproduce_deployment, build_watch_deployment

    params_file = make_project(tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    for build in (build_deployment, build_watch_deployment, build_reproduce_deployment):
        value = build(params_file).parameters["params_file"]
        assert value == "project/params.yaml" and not Path(value).is_absolute()
    monkeypatch.chdir(tmp_path / "project")
    assert build_deployment(Path("params.yaml")).parameters == {"params_file": "params.yaml"}


def test_flow_run_link_uses_the_ui_route_of_a_real_server_and_none_under_an_ephemeral_one():
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    from flows.train_flow import flow_run_ui_url

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert flow_run_ui_url("abc") == "http://127.0.0.1:4200/runs/flow-run/abc"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api", PREFECT_UI_URL: "https://ui.example/"}):
        assert flow_run_ui_url("abc") == "https://ui.example/runs/flow-run/abc"
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert flow_run_ui_url("abc") is None


def test_log_lines_sent_to_the_ui_carry_the_message_without_the_logger_name():
    from flows.run_log import LOG_FORMAT

    record = logging.LogRecord("kontext_core.stages.train", logging.INFO, __file__, 1, "step %d", (3,), None)
    assert logging.Formatter(LOG_FORMAT).format(record) == "step 3"


def test_validation_table_keeps_grids_out_of_its_cells(tmp_path):
    from kontext_core.stages.views import validation_markdown
    from kontext_core.validate.run import grid_name

    (tmp_path / "grids").mkdir()
    Image.new("RGB", (256, 64), "white").save(tmp_path / "grids" / grid_name("edit/a.png"))
    text = validation_markdown([{"pair_id": "edit/a.png", "psnr": 20.0, "psnr_base": 18.0}], tmp_path / "grids", None)
    row = next(line for line in text.splitlines() if line.startswith("| edit/a.png"))
    assert row.endswith("| grid 1 (below) |") and "data:image" not in row
    assert "![grid 1](data:image/png;base64," in text.split(row, 1)[1]
    assert os.path.getsize(tmp_path / "grids" / grid_name("edit/a.png")) > 0


def test_a_run_with_overrides_is_not_recorded_in_dvc_lock_and_says_what_the_workspace_holds(tmp_path, monkeypatch):
    from kontext_core.dvc_lock import NO_COMMIT_ENV, workspace_after_run

    registration = {"model_uri": "models:/kontext-lora/2", "became_champion": False}
    assert workspace_after_run(tmp_path, tmp_path / "params.yaml", {"learning_rate": 0.005}, registration) == {
        "dvc_lock": "",
        "workspace": "",
    }  # not a DVC repository: nothing to keep in step
    (tmp_path / ".dvc").mkdir()
    lines = workspace_after_run(tmp_path, tmp_path / "params.yaml", {"learning_rate": 0.005}, registration)
    assert lines["dvc_lock"] == "dvc.lock not updated: this run overrode learning_rate=0.005"
    assert "this run's (models:/kontext-lora/2, not the @champion), made with learning_rate=0.005" in lines["workspace"]
    monkeypatch.setenv(NO_COMMIT_ENV, "1")
    plain = workspace_after_run(tmp_path, tmp_path / "params.yaml", {}, registration | {"became_champion": True})
    assert plain == {
        "dvc_lock": "dvc.lock not updated (--no-dvc-commit)",
        "workspace": "workspace: models/adapter and the metrics are models:/kontext-lora/2 (the new @champion)",
    }
