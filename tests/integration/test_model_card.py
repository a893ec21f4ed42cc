"""Every registered version carries its model card; `kontext export --format hub` writes the hub folder."""

from __future__ import annotations

from pathlib import Path

import mlflow
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from typer.testing import CliRunner

from flows.cli import app


def test_hub_export_of_the_champion_is_a_folder_the_hub_reads(built_project, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{built_project / 'mlflow.db'}")
    files = mlflow.artifacts.download_artifacts("models:/kontext-lora@champion", dst_path=str(tmp_path / "version"))
    logged = ModelCard.load(next(Path(files).rglob("model_card/README.md")))
    assert logged.data.to_dict()["license_name"] == "flux-1-dev-non-commercial-license"

    out = tmp_path / "hub"
    args = ["export", "--format", "hub", "--model", "models:/kontext-lora@champion", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--params", str(built_project / "params.yaml")])
    assert result.exit_code == 0, result.output
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert "pytorch_lora_weights.safetensors" in names and "README.md" in names
    assert load_file(out / "pytorch_lora_weights.safetensors")  # the diffusers layout, as registered
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["license"] == "other"
    for item in data["widget"]:
        assert item["output"]["url"] in names  # every sample image the card shows is in the folder
    assert "| eval_loss |" in card.text and "models/tiny-kontext" in card.text
    assert str(built_project) not in (out / "README.md").read_text()

    folder = tmp_path / "hub-from-folder"
    args = ["export", "--format", "hub", "--model", str(built_project / "models/adapter"), "--out", str(folder)]
    result = CliRunner().invoke(app, [*args, "--params", str(built_project / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert (folder / "README.md").read_text() == (out / "README.md").read_text()
