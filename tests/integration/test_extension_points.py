"""The extension points of the house: a third dataset backend and a third adapter kind each take one
new module (tests/plugins/) plus one registration line, and the stages carry them unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from kontext_core.data.backends import BACKENDS, register_backend
from kontext_core.model.adapter_kinds import ADAPTER_KINDS, register_adapter_kind
from kontext_core.stages import run_stage
from tests.conftest import write_params
from tests.plugins.toy_adapter import WEIGHTS, ToyBias
from tests.plugins.toy_backend import ToyBackend


@pytest.fixture
def toy_backend():
    register_backend(ToyBackend())
    yield
    BACKENDS.pop("toy")


@pytest.fixture
def toy_adapter():
    register_adapter_kind(ToyBias())
    yield
    ADAPTER_KINDS.pop("toy")


def _copy_project(built: Path, dest: Path) -> Path:
    shutil.copytree(built, dest, symlinks=True)
    # The copied store keeps the session's runs; a fresh experiment keeps this test's own.
    write_params(dest / "params.yaml", mlflow={"tracking_uri": f"sqlite:///{dest / 'mlflow.db'}"})
    return dest / "params.yaml"


def _toy_project(built: Path, tmp_path: Path) -> Path:
    """A copy of the built project whose dataset file holds a toy edit set and its toy references."""
    params_file = _copy_project(built, tmp_path / "p")
    datasets = [
        {"id": "edits", "type": "toy", "instance_prompt": "edits", "conditioning_data": ["refs"]},
        {"id": "refs", "type": "toy", "instance_prompt": "refs", "dataset_type": "conditioning"},
    ]
    (tmp_path / "p/config/toy.json").write_text(json.dumps(datasets))
    write_params(params_file, data_backend_config="config/toy.json", eval_dataset_id=None)
    return params_file


def test_a_third_dataset_backend_runs_through_the_data_stages(built_project, tmp_path, toy_backend):
    params_file = _toy_project(built_project, tmp_path)
    for name in ("fetch", "pair", "degrade", "cache_vae"):
        assert not run_stage(name, params_file)["skipped"]
    pairs = json.loads((tmp_path / "p/data/pair/pairs.json").read_text())
    assert [p["target"] for p in pairs] == [f"toy:edits/{i}" for i in range(3)]
    assert [p["references"][0]["image"] for p in pairs] == [f"toy:refs/{i}" for i in range(3)]
    index = json.loads((tmp_path / "p/cache/vae/index.json").read_text())
    assert len(index) == 3 and all(len(entry["references"]) == 1 for entry in index.values())


def test_an_unregistered_backend_is_named_with_the_allowed_ones(built_project, tmp_path):
    params_file = _toy_project(built_project, tmp_path)
    with pytest.raises(Exception, match=r"type = 'toy': unknown backend; allowed: local, huggingface"):
        run_stage("fetch", params_file)


def test_a_third_adapter_kind_trains_validates_and_registers(built_project, tmp_path, toy_adapter):
    params_file = _copy_project(built_project, tmp_path / "p")
    write_params(params_file, lora_type="toy", learning_rate=0.05)
    for name in ("train", "validate", "register"):
        assert not run_stage(name, params_file)["skipped"], name
    saved = load_file(tmp_path / "p/models/adapter" / WEIGHTS)["toy_bias"]
    assert saved.abs().sum() > 0  # it trained
    validate = json.loads((tmp_path / "p/artifacts/metrics/validate.json").read_text())
    assert validate["psnr"] != validate["psnr_base"]  # the live adapter changed the edits
    registration = json.loads((tmp_path / "p/artifacts/register/registration.json").read_text())
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'p/mlflow.db'}")
    version = client.get_model_version(registration["model_name"], registration["version"])
    assert version.tags["kontext.adapter_format"] == "toy-bias"


def test_an_image_edited_in_place_re_runs_the_stages_that_read_pixels(built_project, tmp_path):
    """Same name, same size: the records and the pair table do not change, but the pixels do."""
    from PIL import Image

    params_file = _copy_project(built_project, tmp_path / "p")
    for name in ("fetch", "pair", "degrade", "cache_vae"):
        assert run_stage(name, params_file)["skipped"], name  # the copy is up to date
    index_before = json.loads((tmp_path / "p/cache/vae/index.json").read_text())
    image = sorted((tmp_path / "p/data/samples/pairs/edited").glob("*.png"))[0]
    with Image.open(image) as img:
        pixels = img.convert("RGB")
    pixels.putpixel((0, 0), tuple(255 - c for c in pixels.getpixel((0, 0))))
    pixels.save(image)
    assert not run_stage("fetch", params_file)["skipped"]
    run_stage("pair", params_file)
    assert not run_stage("cache_vae", params_file)["skipped"]
    index_after = json.loads((tmp_path / "p/cache/vae/index.json").read_text())
    changed = [pair for pair in index_before if index_before[pair] != index_after[pair]]
    assert len(changed) == 1  # only the edited image was encoded again (content-addressed)
