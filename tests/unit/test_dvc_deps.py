"""DVC deps come from params.yaml and the dataset file: local folders and files yes, hub ids no."""

from __future__ import annotations

import json
import shutil

import yaml

from kontext_core.config import params_from_dict
from kontext_core.dvc_deps import as_dep, is_local, stage_data_deps
from kontext_core.dvc_yaml import render
from tests.conftest import ROOT

PRODUCED = ["models/tiny-kontext", "data/samples"]


def test_committed_dvc_yaml_is_current():
    assert (ROOT / "dvc.yaml").read_text() == render(ROOT), "run `kontext dvc-yaml`"


def test_hub_ids_are_not_paths_but_stage_outputs_and_deep_paths_are(tmp_path):
    assert not is_local("black-forest-labs/FLUX.1-Kontext-dev", tmp_path, PRODUCED)
    assert not is_local("Yuanshi/Subjects200K", tmp_path, PRODUCED)
    # Decided the same before and after init built it (a fresh clone has no models/ yet).
    assert is_local("models/tiny-kontext", tmp_path, PRODUCED)
    assert is_local("data/samples/subjects200k", tmp_path, PRODUCED)
    assert is_local("my/own/parquet", tmp_path, PRODUCED)
    (tmp_path / "weights").mkdir()
    assert is_local("weights", tmp_path, PRODUCED)


def test_paths_inside_the_project_are_relative(tmp_path):
    assert as_dep(str(tmp_path / "mydata" / "a"), tmp_path) == "mydata/a"
    assert as_dep("mydata/a", tmp_path) == "mydata/a"
    outside = tmp_path.parent / "elsewhere"
    assert as_dep(str(outside), tmp_path) == str(outside)


def test_fetch_follows_every_location_the_dataset_file_names(tmp_path):
    entries = [
        {"id": "edits", "type": "local", "instance_data_dir": "mine/edits", "conditioning_data": ["refs"]},
        {"id": "refs", "type": "local", "instance_data_dir": "mine/refs", "conditioning_type": "reference_strict"},
        {"id": "panels", "type": "huggingface", "dataset_name": "mine/parquet/train"},
        {"id": "hub", "type": "huggingface", "dataset_name": "Yuanshi/Subjects200K"},
        {"id": "off", "type": "local", "instance_data_dir": "mine/off", "disabled": True},
    ]
    (tmp_path / "datasets.json").write_text(json.dumps(entries))
    hub_model = "black-forest-labs/FLUX.1-Kontext-dev"
    params = params_from_dict({"data_backend_config": "datasets.json", "pretrained_model_name_or_path": hub_model})
    deps = stage_data_deps(params, tmp_path, PRODUCED)
    assert deps["fetch"] == ["datasets.json", "mine/edits", "mine/refs", "mine/parquet/train"]
    assert deps["pair"] == ["datasets.json"]
    # A hub model is covered by the fingerprint (id + revision), not by a DVC dep.
    assert deps["cache_vae"] == deps["quantize"] == deps["validate"] == []


def test_generated_dvc_yaml_names_the_users_folders(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "config").mkdir()
    (tmp_path / "config/multidatabackend.json").write_text(
        json.dumps([{"id": "edits", "type": "local", "instance_data_dir": "/abs/photos"}])
    )
    stages = yaml.safe_load(render(tmp_path))["stages"]
    assert "/abs/photos" in stages["fetch"]["deps"]
    assert "models/tiny-kontext" in stages["cache_vae"]["deps"]
    assert "config/lycoris_config.json" in stages["train"]["deps"]


def test_a_prompt_library_is_a_train_dep_only_when_set(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config/multidatabackend.json").write_text("[]")
    plain = stage_data_deps(params_from_dict({}), tmp_path, PRODUCED)["train"]
    assert not any("prompts" in dep for dep in plain)
    params = params_from_dict({"user_prompt_library": "config/prompts.json"})
    assert "config/prompts.json" in stage_data_deps(params, tmp_path, PRODUCED)["train"]
