"""The registered adapter loads with stock MLflow and diffusers code; `kontext edit` uses it."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from diffusers import FluxKontextPipeline
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import edit_kwargs


@pytest.fixture
def store(built_project):
    uri = f"sqlite:///{built_project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _edit(pipe, image):
    return np.asarray(
        pipe(image=image, generator=torch.Generator().manual_seed(0), **edit_kwargs(64)).images[0],
        dtype=int,
    )


def test_champion_loads_with_stock_mlflow_and_changes_the_output(built_project, store, monkeypatch):
    monkeypatch.chdir(built_project)  # the version names its base relative to the project
    loaded = mlflow.pyfunc.load_model("models:/kontext-lora@champion")
    pipe = loaded.unwrap_python_model().pipe
    assert isinstance(pipe, FluxKontextPipeline)
    base = FluxKontextPipeline.from_pretrained(built_project / "models/tiny-kontext")
    image = Image.open(next((built_project / "data/samples/pairs-eval/reference").glob("*.png"))).resize((64, 64))
    with_adapter, without = _edit(pipe, image), _edit(base, image)
    assert np.abs(with_adapter - without).sum() > 0


def test_loading_without_the_base_model_says_what_to_do(built_project, store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KONTEXT_BASE_MODEL_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match="KONTEXT_BASE_MODEL_ROOT"):
        mlflow.pyfunc.load_model("models:/kontext-lora@champion")
    loaded = mlflow.pyfunc.load_model(
        "models:/kontext-lora@champion", model_config={"base_model_root": str(built_project)}
    )
    assert isinstance(loaded.unwrap_python_model().pipe, FluxKontextPipeline)


def test_stock_load_lora_weights_accepts_the_adapter_file(built_project):
    pipe = FluxKontextPipeline.from_pretrained(built_project / "models/tiny-kontext")
    pipe.load_lora_weights(str(built_project / "models/adapter"), weight_name="pytorch_lora_weights.safetensors")
    assert pipe.get_active_adapters()
    assert any("lora_A" in name for name, _ in pipe.transformer.named_parameters())


def test_kontext_edit_from_registry_and_from_folder(built_project, store, tmp_path, monkeypatch):
    monkeypatch.chdir(built_project)
    source = next((built_project / "data/samples/pairs-eval/reference").glob("*.png"))
    runner = CliRunner()
    outputs = {}
    for label, model in (("registry", "models:/kontext-lora@champion"), ("folder", "models/adapter")):
        out = tmp_path / f"{label}.png"
        result = runner.invoke(
            app,
            [
                "edit",
                "--model",
                model,
                "--image",
                str(source),
                "--prompt",
                "invert the colours",
                "--out",
                str(out),
                "--params",
                str(built_project / "params.yaml"),
                "--steps",
                "2",
            ],
        )
        assert result.exit_code == 0, result.output
        outputs[label] = np.asarray(Image.open(out), dtype=int)
    assert outputs["registry"].shape == (64, 64, 3)  # the input image size (FAST samples are 64 px)
    assert np.array_equal(outputs["registry"], outputs["folder"])


def test_kontext_edit_reports_a_missing_adapter(built_project, tmp_path):
    source = next((built_project / "data/samples/pairs-eval/reference").glob("*.png"))
    result = CliRunner().invoke(
        app,
        [
            "edit",
            "--model",
            str(tmp_path / "nope"),
            "--image",
            str(source),
            "--prompt",
            "x",
            "--params",
            str(built_project / "params.yaml"),
        ],
    )
    assert result.exit_code == 2
    assert "no such adapter" in result.output
