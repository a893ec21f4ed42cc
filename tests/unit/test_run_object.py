"""The run object (kontext_core/run.py): built once from the params file and the run's settings, frozen,
walked once."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from kontext_core.config import ConfigError, load_params
from kontext_core.config.overrides import RunOverrides
from kontext_core.run import build_run
from kontext_core.stages import STAGE_ORDER
from tests.conftest import make_project, write_params


def test_a_run_layers_its_settings_once_and_stays_as_built(tmp_path):
    params_file = make_project(tmp_path)
    run = build_run(params_file, settings={"learning_rate": 0.004, "seed": None})
    assert run.params.learning_rate == 0.004 and run.overrides == {"learning_rate": 0.004}
    assert (run.project, run.params_path) == (tmp_path.resolve(), params_file.resolve())
    # The same edit of the file gives the same params.
    write_params(params_file, learning_rate=0.004)
    assert run.params == load_params(params_file)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.params = load_params(params_file)  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        run.settings.learning_rate = 0.1  # type: ignore[misc]
    # Settings given as a model are used as they are.
    settings = RunOverrides(learning_rate=0.004)
    assert build_run(params_file, settings=settings).settings is settings


def test_a_run_knows_the_flow_parameters_that_describe_it(tmp_path):
    params_file = make_project(tmp_path / "p")
    run = build_run(params_file, settings=RunOverrides(seed=3))
    assert run.is_for(str(params_file), None, RunOverrides(seed=3))
    assert run.is_for("params.yaml", str(tmp_path / "p"), RunOverrides(seed=3))
    assert not run.is_for(str(params_file), None, RunOverrides(seed=4))
    assert not run.is_for(str(params_file), None, RunOverrides())


def test_bad_settings_and_preflight_problems_fail_in_one_line_each(tmp_path):
    params_file = make_project(tmp_path)
    with pytest.raises(ConfigError, match=r"^run override lora_rank = 0: Input should be greater than or equal to 1$"):
        build_run(params_file, settings={"lora_rank": 0})
    with pytest.raises(ConfigError) as missing:
        build_run(params_file, settings={"data_backend_config": "config/nowhere.json", "lora_type": "loha-ish"})
    assert missing.value.problems == [
        "lora_type = 'loha-ish': unknown adapter kind; allowed: standard, lycoris",
        "data_backend_config = 'config/nowhere.json': no such file in the project",
    ]
    # `kontext stage` leaves those checks to the stage.
    assert build_run(params_file, settings={"lora_type": "loha-ish"}, check=False).params.lora_type == "loha-ish"


def test_the_walk_is_taken_once_and_gives_the_leading_fingerprints(tmp_path):
    run = build_run(make_project(tmp_path))
    assert run.checks is None and not run.up_to_date and run.fingerprint("init") is None
    walked = run.walked()
    # Nothing ran yet: the walk stops at init, the first stage that would run.
    assert [check.name for check in walked.checks] == [STAGE_ORDER[0]] and not walked.checks[0].up_to_date
    assert not walked.up_to_date and walked.stored_manifests() is None
    assert walked.fingerprint("init") == walked.checks[0].fingerprint and walked.fingerprint("fetch") is None
    assert walked.walked() is walked
