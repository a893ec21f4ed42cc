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
    assert '  model_name: "flux-kontext-test-lora"  # from hub_model_id' in text


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


ST_DIR = ROOT / "config/examples/simpletuner"


def _st_project(tmp_path: Path, config: dict, dataset_file: str = "kontext-two-folder.json") -> Path:
    """SimpleTuner's config at the project root, a quick-start dataset file where it points."""
    (tmp_path / "config.json").write_text(json.dumps(config))
    key = next((k for k in config if k.lstrip("-") == "data_backend_config"), None)
    target = tmp_path / (config[key] if key else "config/multidatabackend.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    source = ST_DIR / dataset_file if (ST_DIR / dataset_file).exists() else ROOT / "config/examples" / dataset_file
    shutil.copy(source, target)
    shutil.copy(ROOT / "config/lycoris_config.json", tmp_path / "config/lycoris_config.json")
    for name in ("pairs/edited", "pairs/reference", "pairs-eval/edited", "pairs-eval/reference", "clean"):
        (tmp_path / "data/samples" / name).mkdir(parents=True, exist_ok=True)
    return tmp_path / "config.json"


def _check(params_file: Path):
    result = runner.invoke(app, ["config", "check", "--params", str(params_file)])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result.stderr.splitlines()


QUICK = json.loads((ST_DIR / "FLUX_KONTEXT.quickstart.config.json").read_text())
EVAL_SPLIT = json.loads((ST_DIR / "FLUX_KONTEXT.quickstart.eval-split.config.json").read_text())


@pytest.mark.parametrize(
    ("config", "dataset_file"),
    [
        (json.loads((ST_DIR / "config.json.example").read_text()), "kontext-two-folder.json"),
        (QUICK, "kontext-two-folder.json"),
        ({**QUICK, **EVAL_SPLIT}, "kontext-eval-split.json"),
        (QUICK, "kontext-deblur.json"),
        (QUICK, "kontext-jpeg.json"),
        (json.loads(EXAMPLE.read_text()), "multidatabackend-controlnet-512px.json"),
    ],
    ids=[
        "config.json.example",
        "quickstart",
        "quickstart+eval-split",
        "quickstart+deblur",
        "quickstart+jpeg",
        "kontext+canny",
    ],
)
def test_simpletuners_own_files_pass_config_check(tmp_path, config, dataset_file):
    resolved, _ = _check(_st_project(tmp_path, config, dataset_file))
    assert resolved["params"]["model_flavour"] == "kontext"


def test_config_json_example_is_warned_that_it_names_no_flavour(tmp_path):
    """SimpleTuner's config.json.example trains FLUX.1-dev there: never silently as Kontext here."""
    resolved, stderr = _check(_st_project(tmp_path, json.loads((ST_DIR / "config.json.example").read_text())))
    assert any(line.startswith("warning: ") and "model_flavour is not set" in line for line in stderr)
    assert resolved["params"]["learning_rate"] == 1e-4 and resolved["params"]["validation_num_inference_steps"] == 20
    # Its "true"/"false" strings are booleans and its polynomial schedule takes SimpleTuner's lr_power.
    assert resolved["params"]["gradient_checkpointing"] is True and resolved["params"]["lr_power"] == 0.8


def test_loss_type_l2_and_simpletuners_runtime_and_deprecated_keys(tmp_path, caplog):
    config = {
        **json.loads(EXAMPLE.read_text()),
        "loss_type": "l2",
        "text_encoder_1_precision": "no_change",
        "text_encoder_2_precision": "no_change",
        "--text_encoder_3_precision": "int8-quanto",
    }
    params_file = _st_project(tmp_path, config, "kontext-jpeg.json")
    datasets_path = tmp_path / config["data_backend_config"]
    entries = json.loads(datasets_path.read_text())
    entries[0]["ignore_epochs"] = False
    entries[0]["conditioning"][0]["enhance_blocks"] = True
    datasets_path.write_text(json.dumps(entries))
    resolved, stderr = _check(params_file)
    assert resolved["params"]["loss_type"] == "mse"
    warnings = [line for line in stderr if line.startswith("warning: ")]
    assert any("text_encoder_3_precision" in line for line in warnings)  # a value that would matter
    assert not any("text_encoder_1_precision" in line for line in warnings)  # no_change: no news
    assert any("deprecated SimpleTuner dataset keys" in line and "ignore_epochs" in line for line in warnings)


def test_simpletuner_values_refused_here_get_one_line_with_the_reason(tmp_path):
    params_file = _project(tmp_path, {"model_type": "full", "optimizer": "prodigy"}, "config.json")
    result = runner.invoke(app, ["config", "check", "--params", str(params_file)])
    lines = _error_lines(result)
    assert result.exit_code == 2 and len(lines) == 2
    assert "model_type = 'full': this pipeline trains adapters only" in lines[0]
    assert "optimizer" in lines[1] and "adamw" in lines[1]


def test_defaults_that_differ_are_noted_for_the_keys_a_file_leaves_out(tmp_path):
    _, stderr = _check(_project(tmp_path, {"seed": 1}, "config.json"))
    note = next(line for line in stderr if "differ from SimpleTuner's on purpose" in line)
    assert "learning_rate (SimpleTuner: 4e-07)" in note and "; seed (" not in note and ": seed (" not in note


def test_export_simpletuner_writes_files_its_parser_accepts(tmp_path):
    """Every key is one of SimpleTuner's (derived table), every value one of its choices, null = its off."""
    from kontext_core.config.simpletuner_defaults import SIMPLETUNER_COMMIT

    table = json.loads((ROOT / f"config/simpletuner/defaults@{SIMPLETUNER_COMMIT[:12]}.json").read_text())["keys"]
    params_file = _project(tmp_path, {"loss_type": "mse", "optimizer": "adamw", "max_train_steps": 5})
    out = tmp_path / "st"
    result = runner.invoke(app, ["config", "export-simpletuner", "--params", str(params_file), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    entries = json.loads((out / "multidatabackend.json").read_text())
    for key, value in config.items():
        assert key in table, key
        choices = table[key].get("choices")
        assert not choices or str(value) in map(str, choices), (key, value, choices)
    assert config["loss_type"] == "l2" and config["optimizer"] == "torch-adamw"
    assert config["num_train_epochs"] == 0 and config["checkpoint_step_interval"] == 0  # null: off
    assert config["validation_step_interval"] == 0 and config["tracker_project_name"] == "kontext-lora"
    assert "validation_resolution" not in config and "null (each eval pair" in result.stderr
    assert {e["id"] for e in entries} == {"edit", "ref"}
    assert all(e["crop_style"] == "random" and e["resolution_type"] == "pixel_area" for e in entries)
    # And back: the exported files check here to the same settings (beside the project's data folders).
    for name in ("config.json", "multidatabackend.json"):
        shutil.copy(out / name, tmp_path / name)
    config["data_backend_config"] = "multidatabackend.json"
    (tmp_path / "config.json").write_text(json.dumps(config))
    back, _ = _check(tmp_path / "config.json")
    original, _ = _check(params_file)
    for key in ("loss_type", "optimizer", "max_train_steps", "num_train_epochs", "lr_power", "seed"):
        assert back["params"][key] == original["params"][key], key


def test_every_key_of_simpletuners_dataset_template_is_known(tmp_path, caplog):
    """SimpleTuner's multidatabackend.json.example is a template ("random|center|corner" lists the
    options): with each such value set to its first option, every key of it loads."""
    from kontext_core.config.load import dataset_problems

    entries = json.loads((ST_DIR / "multidatabackend.json.example").read_text())
    for entry in entries:
        for key, value in entry.items():
            if isinstance(value, str) and "|" in value:
                entry[key] = value.split("|")[0]
        entry.pop("instance_data_dir", None)  # /path/to/data/tree: a folder of the reader's machine
    (tmp_path / "datasets.json").write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING, logger="kontext_core.config"):
        _, problems = dataset_problems(tmp_path / "datasets.json", tmp_path)
    assert not [line for line in problems if "unknown key" in line or "Input should be" in line], problems
    messages = [record.getMessage() for record in caplog.records]
    assert any("ignore_epochs" in message and "deprecated" in message for message in messages)
