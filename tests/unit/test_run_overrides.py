"""Run settings layered over params.yaml: the same checks and fingerprints as editing the file."""

from __future__ import annotations

import pytest

from kontext_core.config import ConfigError, load_params, read_params_file
from kontext_core.config.overrides import OVERRIDE_KEYS, check_overrides, layered_params, parse_assignments
from kontext_core.stages import fingerprint
from tests.conftest import make_project, write_params


def test_an_override_fingerprints_exactly_like_the_same_edit_of_params_yaml(tmp_path):
    params_file = make_project(tmp_path)
    # quantize's fingerprint holds the base model's content: stand one in for what init would build.
    (tmp_path / "models/tiny-kontext").mkdir(parents=True)
    (tmp_path / "models/tiny-kontext/model_index.json").write_text("{}\n")
    layered, used = layered_params(read_params_file(params_file), {"base_model_precision": "no_change", "seed": None})
    assert used == {"base_model_precision": "no_change"}
    before = fingerprint("quantize", load_params(params_file), tmp_path)
    write_params(params_file, base_model_precision="no_change")
    edited = load_params(params_file)
    assert layered == edited
    assert fingerprint("quantize", layered, tmp_path).value == fingerprint("quantize", edited, tmp_path).value
    assert fingerprint("quantize", layered, tmp_path).value != before.value


def test_bad_overrides_fail_in_one_line_each_naming_the_key(tmp_path):
    raw = read_params_file(make_project(tmp_path))
    with pytest.raises(ConfigError) as unknown:
        check_overrides({"learning_rat": 0.1})
    assert "run override 'learning_rat': not a run setting; did you mean 'learning_rate'?" in str(unknown.value)
    with pytest.raises(ConfigError) as bad:
        check_overrides({"lora_rank": 0, "optimizer": "sgd"})
    assert len(bad.value.problems) == 2
    assert bad.value.problems[0] == "run override lora_rank = 0: Input should be greater than or equal to 1"
    assert bad.value.problems[1].startswith("run override optimizer = 'sgd': Input should be 'adamw'")
    # Cross-key rules of params.yaml apply to the layered result.
    with pytest.raises(ConfigError, match=r"lr_end = 4e-07 must be below learning_rate = 1e-07"):
        layered_params(raw, {"lr_scheduler": "polynomial", "learning_rate": 1e-7})


def test_epochs_alone_replace_the_files_step_count(tmp_path):
    raw = read_params_file(make_project(tmp_path))
    params, _ = layered_params(raw, {"num_train_epochs": 2})
    assert params.num_train_epochs == 2 and not params.max_train_steps
    params, _ = layered_params(raw, {"num_train_epochs": 2, "max_train_steps": 5})
    assert (params.num_train_epochs, params.max_train_steps) == (2, 5)


def test_cli_assignments_are_read_as_yaml_scalars():
    assert parse_assignments(["learning_rate=5e-4", "lora_type=lycoris", "seed=3"]) == {
        "learning_rate": 5e-4,
        "lora_type": "lycoris",
        "seed": 3,
    }
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_assignments(["learning_rate"])


def test_the_flow_form_has_every_run_setting_typed_and_described():
    from flows.placement import kontext_stages, kontext_train_placed
    from flows.train_flow import kontext_train

    schema = kontext_train.parameters.model_dump()
    # One typed model parameter (Prefect renders it as a form), the same in every flow that runs stages.
    assert set(schema["properties"]) == {"params_file", "workdir", "settings"}
    assert schema["properties"]["settings"]["$ref"] == "#/definitions/RunSettings"
    assert not schema["required"]  # every field of the form may stay empty
    for other in (kontext_stages, kontext_train_placed):
        assert other.parameters.model_dump()["definitions"]["RunSettings"] == schema["definitions"]["RunSettings"]
    properties = schema["definitions"]["RunSettings"]["properties"]
    assert set(properties) == set(OVERRIDE_KEYS)
    for key in OVERRIDE_KEYS:
        assert properties[key]["description"], key
        assert properties[key]["default"] is None, key
    assert properties["learning_rate"]["anyOf"][0] == {"exclusiveMinimum": 0, "type": "number"}
    assert "optimi-lion" in properties["optimizer"]["anyOf"][0]["enum"]
    assert properties["lora_rank"]["anyOf"][0]["minimum"] == 1
    assert properties["lora_type"]["anyOf"][0]["enum"] == ["standard", "lycoris"]  # a drop-down


def test_stage_summary_line_carries_counts_and_fingerprint():
    from flows.summary import stage_summary

    line = stage_summary(
        "pair",
        {
            "skipped": False,
            "wall_seconds": 1.25,
            "fingerprint": "abcdef0123456789",
            "info": {"pairs": {"train": 3, "eval": 1}, "problems": 0, "big": list(range(99))},
        },
    )
    assert line == "stage pair: ran in 1.2s, fingerprint abcdef012345: pairs={train=3, eval=1}, problems=0"


def test_data_watch_compares_dataset_identities():
    from flows.data_watch import changed_keys

    assert changed_keys({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["b", "c"]
    assert changed_keys({"a": 1}, {"a": 1}) == []


def test_the_pull_step_refuses_a_folder_that_is_not_a_checkout(tmp_path):
    from flows.deployments import enter_checkout

    with pytest.raises(FileNotFoundError, match="not a kontext-pipeline checkout"):
        enter_checkout(str(tmp_path))


def test_kontext_run_refuses_a_bad_setting_in_one_line_before_any_stage(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    params_file = make_project(tmp_path)
    result = CliRunner().invoke(app, ["run", "--params", str(params_file), "--set", "lora_rank=0"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: run override lora_rank = 0: Input should be greater than or equal to 1"
    assert not (tmp_path / "artifacts").exists()


def test_a_validation_prompt_override_is_the_same_edit_and_a_train_param(tmp_path):
    from kontext_core.stages import STAGES

    params_file = make_project(tmp_path)
    layered, used = layered_params(read_params_file(params_file), {"validation_prompt": "make it night"})
    assert used == {"validation_prompt": "make it night"}
    write_params(params_file, validation_prompt="make it night")
    assert layered == load_params(params_file)
    # ... and train's fingerprint reads it (validation during training renders it into the run).
    assert "validation_prompt" in STAGES["train"].params_keys
