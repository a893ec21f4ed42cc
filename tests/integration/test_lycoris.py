"""LoKr through the stages: train, save in LyCORIS' format, validate, register, `kontext edit`;
and the quantize stage is not re-run when only training changes."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from diffusers import FluxKontextPipeline
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.fsutil import sha256_file
from kontext_core.inference import load_adapter
from kontext_core.stages import STAGE_ORDER, read_manifest, run_stage
from tests.conftest import edit_kwargs, make_project, write_params

QUANTIZED = "models/quantized/transformer"  # streamed: one shard per block + index (model/quantize.py)


@pytest.fixture(scope="module")
def lokr_project(tmp_path_factory, mlflow_template):
    import shutil

    project = tmp_path_factory.mktemp("lokr")
    shutil.copy(mlflow_template, project / "mlflow.db")
    params_file = make_project(project, mlflow_db=project / "mlflow.db", lora_type="lycoris", shared_init=True)
    for name in STAGE_ORDER:
        run_stage(name, params_file)
    return project


def test_lokr_adapter_is_saved_in_lycoris_format_and_used_by_validation(lokr_project):
    adapter = lokr_project / "models/adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["lycoris_config.json", "lycoris_weights.safetensors"]
    assert json.loads((adapter / "lycoris_config.json").read_text())["algo"] == "lokr"
    with safe_open(str(adapter / "lycoris_weights.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
        # The shipped config targets attention ("Attention" = diffusers' FluxAttention): 14 linears.
        modules = {k.split(".")[0] for k in keys}
        assert len(modules) == 14 and all(k.startswith("lycoris_") for k in keys)
        assert any(".lokr_w1" in k for k in keys)
        assert json.loads(handle.metadata()["lycoris_config"])["factor"] == 16
    metrics = json.loads((lokr_project / "artifacts/metrics/validate.json").read_text())
    assert metrics["psnr"] != metrics["psnr_base"]  # validation ran with the LoKr attached
    assert list((lokr_project / "artifacts/validate/grids").glob("*.png"))


def test_kontext_edit_loads_lokr_from_registry_and_folder(lokr_project, tmp_path, monkeypatch):
    uri = f"sqlite:///{lokr_project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    version = mlflow.MlflowClient().get_model_version_by_alias("kontext-lora", "champion")
    assert version.tags["kontext.adapter_format"] == "lycoris"
    monkeypatch.chdir(lokr_project)
    source = next((lokr_project / "data/samples/pairs-eval/reference").glob("*.png"))
    outputs = {}
    for label, model in (("registry", "models:/kontext-lora@champion"), ("folder", "models/adapter")):
        out = tmp_path / f"{label}.png"
        args = ["edit", "--model", model, "--image", str(source), "--prompt", "invert the colours"]
        args += ["--out", str(out), "--params", str(lokr_project / "params.yaml"), "--steps", "2"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        outputs[label] = np.asarray(Image.open(out), dtype=int)
    assert np.array_equal(outputs["registry"], outputs["folder"])

    pipe = FluxKontextPipeline.from_pretrained(lokr_project / "models/tiny-kontext")
    image = Image.open(source).resize((64, 64))
    base = np.asarray(pipe(image=image, generator=torch.Generator().manual_seed(0), **edit_kwargs(64)).images[0])
    assert load_adapter(pipe, lokr_project / "models/adapter") == "lycoris"
    edited = np.asarray(pipe(image=image, generator=torch.Generator().manual_seed(0), **edit_kwargs(64)).images[0])
    assert np.abs(edited.astype(int) - base.astype(int)).sum() > 0


def test_rerunning_train_reuses_the_saved_quantized_model(lokr_project):
    params_file = lokr_project / "params.yaml"
    quantized = lokr_project / QUANTIZED

    def state() -> list[tuple]:
        files = sorted(quantized.iterdir())
        return [(f.name, f.stat().st_ino, f.stat().st_mtime_ns, sha256_file(f)) for f in files]

    before = state()
    assert any(name.endswith(".safetensors") for name, *_ in before)
    quantize_manifest = read_manifest(lokr_project, "quantize")
    assert quantize_manifest["info"]["quantized_modules"] == 26
    adapter_before = sha256_file(lokr_project / "models/adapter/lycoris_weights.safetensors")

    write_params(params_file, max_train_steps=3)
    assert run_stage("quantize", params_file)["skipped"] is True
    train = run_stage("train", params_file)
    assert train["skipped"] is False
    assert sha256_file(lokr_project / "models/adapter/lycoris_weights.safetensors") != adapter_before
    # The train stage read the very outputs the first quantize run recorded, and nothing rewrote them.
    assert train["inputs"]["quantize"] == quantize_manifest["outputs"]
    assert read_manifest(lokr_project, "quantize") == quantize_manifest
    assert state() == before
