import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.config import ConfigError, load_all, params_from_dict

runner = CliRunner()


def test_default_params_validate():
    params = params_from_dict({})
    assert params.validation_guidance == 2.5
    assert params.effective_lora_alpha == params.lora_rank


def test_misspelt_key_names_nearest_key():
    with pytest.raises(ConfigError, match="unknown key 'learning_rat'; did you mean 'learning_rate'"):
        params_from_dict({"learning_rat": 1e-4})


def test_misspelt_nested_key():
    with pytest.raises(ConfigError, match="registry: unknown key 'model_nme'; did you mean 'model_name'"):
        params_from_dict({"registry": {"model_nme": "x"}})


def test_wrong_enum_names_allowed_values():
    with pytest.raises(ConfigError) as err:
        params_from_dict({"base_model_precision": "int9-quanto"})
    message = str(err.value)
    assert "base_model_precision" in message and "int9-quanto" in message and "int8-quanto" in message


def _project_with_datasets(tmp_path: Path, datasets: list[dict]) -> Path:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "multidatabackend.json").write_text(json.dumps(datasets))
    (tmp_path / "params.yaml").write_text("eval_dataset_id: null\n")
    return tmp_path / "params.yaml"


def _folder(tmp_path: Path, name: str) -> str:
    (tmp_path / name).mkdir(exist_ok=True)
    return str(tmp_path / name)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda d, t: d[0].update({"resolution_typ": "pixel"}),
            "unknown key 'resolution_typ'; did you mean 'resolution_type'",
        ),
        (lambda d, t: d[0].update({"caption_strategy": "caption_file"}), "caption_strategy = 'caption_file'"),
        (lambda d, t: d[1].pop("instance_data_dir"), "needs 'instance_data_dir'"),
        (lambda d, t: d[0].update({"conditioning_data": ["refs"]}), "unknown dataset 'refs'; did you mean 'ref'"),
        (lambda d, t: d[1].update({"instance_data_dir": str(t / "nowhere")}), "is not a folder"),
        (
            lambda d, t: d[0].update({"conditioning": [{"type": "superresolution", "blur_radious": 3.0}]}),
            "unknown key 'blur_radious'; did you mean 'blur_radius'",
        ),
    ],
)
def test_config_check_reports_one_line(tmp_path, mutate, expected):
    datasets = [
        {"id": "edit", "type": "local", "instance_data_dir": _folder(tmp_path, "e"), "conditioning_data": ["ref"]},
        {
            "id": "ref",
            "type": "local",
            "instance_data_dir": _folder(tmp_path, "r"),
            "conditioning_type": "reference_strict",
        },
    ]
    mutate(datasets, tmp_path)
    params_file = _project_with_datasets(tmp_path, datasets)
    result = runner.invoke(app, ["config", "check", "--params", str(params_file)])
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1, result.output
    assert expected in lines[0]


def test_config_check_prints_resolved_config(tmp_path):
    datasets = [
        {"id": "edit", "type": "local", "instance_data_dir": _folder(tmp_path, "e"), "conditioning_data": ["ref"]},
        {"id": "ref", "type": "local", "instance_data_dir": _folder(tmp_path, "r")},
    ]
    params_file = _project_with_datasets(tmp_path, datasets)
    result = runner.invoke(app, ["config", "check", "--params", str(params_file)])
    assert result.exit_code == 0, result.output
    resolved = json.loads(result.stdout)  # notes and warnings go to stderr
    assert resolved["params"]["lora_rank"] == 16
    assert [d["id"] for d in resolved["datasets"]] == ["edit", "ref"]


def test_eval_dataset_must_be_an_edit_set(tmp_path):
    datasets = [
        {"id": "edit", "type": "local", "instance_data_dir": _folder(tmp_path, "e"), "conditioning_data": ["ref"]},
        {"id": "ref", "type": "local", "instance_data_dir": _folder(tmp_path, "r")},
    ]
    params_file = _project_with_datasets(tmp_path, datasets)
    params_file.write_text("eval_dataset_id: ref\n")
    with pytest.raises(ConfigError, match="eval_dataset_id = 'ref'"):
        load_all(params_file)
