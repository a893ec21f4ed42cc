"""SimpleTuner's config.json as --params, the key table, and every problem of a config at once."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.config import ConfigError, load_all, load_params, params_from_dict
from kontext_core.config.importer import render_params_yaml
from kontext_core.config.simpletuner import MAPPED, REASONS, state_of
from kontext_core.config.simpletuner_keys import SIMPLETUNER_KEYS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config/examples/simpletuner/kontext.peft-lora.config.json"
runner = CliRunner()


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def _project(tmp_path: Path, params: dict | None = None, params_name: str = "params.yaml") -> Path:
    """A project with two small folders and a two-folder dataset file; returns the params file."""
    for name in ("edited", "reference"):
        (tmp_path / "data" / name).mkdir(parents=True)
    datasets = [
        {"id": "edit", "instance_data_dir": "data/edited", "conditioning_data": ["ref"]},
        {"id": "ref", "instance_data_dir": "data/reference", "conditioning_type": "reference_strict"},
    ]
    (tmp_path / "datasets.json").write_text(json.dumps(datasets))
    path = tmp_path / params_name
    content = {"data_backend_config": "datasets.json", **(params or {})}
    path.write_text(json.dumps(content) if params_name.endswith(".json") else yaml.safe_dump(content))
    return path


def test_five_unknown_keys_print_five_lines_in_one_run(tmp_path):
    unknown = {"learning_rat": 1e-4, "lora_rnak": 8, "frobnicate": 1, "colour_grading": "warm", "speed_mode": "fast"}
    result = runner.invoke(app, ["config", "check", "--params", str(_project(tmp_path, unknown))])
    assert result.exit_code == 2
    lines = _error_lines(result)
    assert len(lines) == 5, result.stderr
    for key in unknown:
        assert sum(f"unknown key '{key}'" in line for line in lines) == 1
    # A hint only where one key is truly close.
    assert any("'learning_rat'; did you mean 'learning_rate'?" in line for line in lines)
    assert any("'lora_rnak'; did you mean 'lora_rank'?" in line for line in lines)
    assert all("did you mean" not in line for line in lines if "frobnicate" in line or "speed_mode" in line)


def test_three_independent_mistakes_give_three_lines(tmp_path):
    params = {"optimizer": "sgd", "lr_scheduler": "polynomial", "learning_rate": 1e-6, "lr_end": 1e-5}
    params_file = _project(tmp_path, params)
    datasets = json.loads((tmp_path / "datasets.json").read_text())
    datasets[0]["conditioning_data"] = ["refs"]  # a dataset id that does not exist
    (tmp_path / "datasets.json").write_text(json.dumps(datasets))
    result = runner.invoke(app, ["config", "check", "--params", str(params_file)])
    lines = _error_lines(result)
    assert len(lines) == 3, result.stderr
    assert "optimizer = 'sgd'" in lines[0] and "optimi-lion" in lines[0]
    assert "lr_end = 1e-05 must be below learning_rate = 1e-06" in lines[1]
    assert "conditioning_data names unknown dataset 'refs'; did you mean 'ref'?" in lines[2]


def test_a_rule_on_a_broken_key_is_not_judged_on_its_default():
    # learning_rate is broken: the polynomial rule would compare lr_end with the default 1e-4.
    with pytest.raises(ConfigError) as err:
        params_from_dict({"learning_rate": -1, "lr_scheduler": "polynomial", "lr_end": 5e-4})
    assert len(err.value.problems) == 1 and "learning_rate = -1" in err.value.problems[0]


def test_simpletuner_keys_that_misled_are_known_and_far_typos_get_no_hint():
    # The misleading hints: these are SimpleTuner keys, accepted now.
    params = params_from_dict({"resolution": 512, "validation_prompt": "a cat", "vae_batch_size": 6})
    assert params.resolution == 512
    with pytest.raises(ConfigError) as err:
        params_from_dict({"resolutoin_kind": "pixel"})
    assert "did you mean" not in str(err.value)


def test_dashed_keys_and_json_are_accepted_as_simpletuner_writes_them(tmp_path):
    path = _project(tmp_path, {"--learning_rate": 0.001, "--lora_rank": 4, "--use_ema": False}, "config.json")
    params = load_params(path)
    assert params.learning_rate == 0.001 and params.lora_rank == 4


def test_every_key_of_simpletuners_kontext_example_has_a_state():
    example = json.loads(EXAMPLE.read_text())
    states = {key: state_of(key) for key in example}
    assert "unknown" not in states.values(), states
    assert states["hub_model_id"] == states["report_to"] == states["output_dir"] == "mapped"
    assert states["resolution"] == states["aspect_bucket_rounding"] == "acted on"
    assert states["use_ema"] == states["validation_prompt"] == "acted on"
    assert state_of("user_prompt_library") == "acted on"
    assert set(REASONS) <= SIMPLETUNER_KEYS | set(MAPPED)


QUICKSTART_FILES = ["kontext-two-folder.json", "kontext-eval-split.json", "kontext-deblur.json", "kontext-jpeg.json"]


@pytest.mark.parametrize("dataset_file", QUICKSTART_FILES)
def test_simpletuners_kontext_example_config_passes_config_check(tmp_path, dataset_file):
    """SimpleTuner's own kontext.peft-lora/config.json, unedited, beside each quick-start dataset file."""
    shutil.copy(EXAMPLE, tmp_path / "config.json")
    target = tmp_path / json.loads(EXAMPLE.read_text())["data_backend_config"]
    target.parent.mkdir(parents=True)
    shutil.copy(ROOT / "config/examples" / dataset_file, target)
    for name in ("pairs/edited", "pairs/reference", "pairs-eval/edited", "pairs-eval/reference", "clean"):
        (tmp_path / "data/samples" / name).mkdir(parents=True)
    result = runner.invoke(app, ["config", "check", "--params", str(tmp_path / "config.json")])
    assert result.exit_code == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["params"]["num_train_epochs"] is None  # SimpleTuner's 0 = unset
    assert resolved["params"]["registry"]["model_name"] == "flux-kontext-test-lora"  # hub_model_id
    assert resolved["params"]["checkpoint_step_interval"] == 50
    assert resolved["params"]["validation_step_interval"] == 50  # validation_steps, SimpleTuner's older name
    assert resolved["params"]["num_eval_images"] == 4
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    config_warning = [line for line in warnings if "config.json:" in line]
    # Every key of the example is acted on or mapped, and the not-applicable ones
    # (push_checkpoints_to_hub, disable_benchmark, validation_guidance_rescale) hold values that match
    # what this pipeline does, which is no news: no warning about the config at all.
    assert config_warning == []
    assert resolved["params"]["vae_batch_size"] == 6  # acted on (cache_vae)
    assert resolved["params"]["validation_prompt"] == json.loads(EXAMPLE.read_text())["validation_prompt"]


def test_not_applicable_keys_warn_once_per_run(tmp_path, caplog):
    path = _project(tmp_path, {"validation_negative_prompt": "blurry", "validation_prompt_library": True})
    with caplog.at_level(logging.WARNING, logger="kontext_core.config"):
        for _ in range(3):  # every stage re-reads the files
            load_all(path)
    warned = [r.getMessage() for r in caplog.records if "not applicable" in r.getMessage()]
    assert len(warned) == 1
    assert "validation_negative_prompt" in warned[0] and "validation_prompt_library" in warned[0]


def test_import_simpletuner_writes_an_equivalent_params_yaml(tmp_path):
    out = tmp_path / "params.yaml"
    result = runner.invoke(app, ["config", "import-simpletuner", str(EXAMPLE), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    text = out.read_text()
    example = json.loads(EXAMPLE.read_text())
    # A comment on every key of the source.
    for key in example:
        assert any(key in line and "#" in line for line in text.splitlines()), key
    assert load_params(out) == load_params(EXAMPLE)
    assert "use_ema: false  # acted on" in text
    assert "learning_rate: 1.0e-08  # acted on" in text  # a float in YAML 1.1 too
    assert yaml.safe_load(text)["learning_rate"] == 1e-08
    assert "# push_checkpoints_to_hub: false  # not applicable here" in text
    assert "  model_name: \"flux-kontext-test-lora\"  # from hub_model_id" in text


def test_render_refuses_a_config_with_problems(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"learning_rat": 1}))
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        render_params_yaml(path)


def test_epochs_zero_is_unset_and_fp16_is_refused_with_the_reason():
    assert params_from_dict({"num_train_epochs": 0}).num_train_epochs is None
    with pytest.raises(ConfigError, match="mixed_precision = 'fp16' is not supported: .*allowed: no, bf16"):
        params_from_dict({"mixed_precision": "fp16"})
    with pytest.raises(ConfigError, match="set max_train_steps"):
        params_from_dict({"max_train_steps": 0, "num_train_epochs": 0})


def test_docs_key_table_is_current_and_complete():
    from kontext_core.config.keydoc import render

    doc = (ROOT / "docs/simpletuner.md").read_text()
    assert render() in doc, "run: python -m kontext_core.config.keydoc"
    for key in SIMPLETUNER_KEYS | set(MAPPED):
        assert f"| `{key}` | {state_of(key)} |" in doc
