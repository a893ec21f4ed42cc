"""The registry's copy is never trusted blindly: a flipped byte in a registered adapter is refused in one
line naming the file by every load (`kontext edit`, the pyfunc, `kontext reproduce`, the champion's
re-scoring before a promotion) and named by `kontext verify`."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.stages.verify import verify_project
from kontext_core.tracking.artifact_check import ArtifactMismatch
from tests.reliability.test_reuse import flip_middle_byte

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

WEIGHTS = "pytorch_lora_weights.safetensors"
CHAMPION = "models:/kontext-lora@champion"


@pytest.fixture
def damaged(project_copy, monkeypatch) -> Path:
    """The project with one byte of the champion's registered adapter flipped; the store opened."""
    from kontext_core.config import load_params
    from kontext_core.tracking.runs import open_store

    project = project_copy
    [registered] = sorted((project / "mlruns").rglob(f"artifacts/adapter/{WEIGHTS}"))
    flip_middle_byte(registered)
    monkeypatch.chdir(project)
    open_store(load_params(project / "params.yaml"), project)
    return project


def test_kontext_edit_refuses_a_damaged_registered_adapter_naming_the_file(damaged, tmp_path):
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64)).save(image)
    result = CliRunner().invoke(
        app,
        ["edit", "--model", CHAMPION, "--image", str(image), "--prompt", "x", "--out", str(tmp_path / "out.png"),
         "--params", str(damaged / "params.yaml")],
    )
    assert result.exit_code == 2, result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and f"adapter/{WEIGHTS} differs from the file registered" in errors[0], result.stderr
    assert not (tmp_path / "out.png").exists()


def test_the_pyfunc_refuses_its_damaged_copy(damaged):
    with pytest.raises(ArtifactMismatch, match=f"adapter/{WEIGHTS} differs"):
        mlflow.pyfunc.load_model(CHAMPION, model_config={"base_model_root": str(damaged)})


def test_reproduce_and_promotion_refuse_it(damaged):
    from kontext_core.config import load_params
    from kontext_core.reproduce.record import CannotReproduce, read_lineage, registered_adapter
    from kontext_core.tracking.registry import champion_score, champion_version

    client = mlflow.MlflowClient()
    with pytest.raises(CannotReproduce, match=f"adapter/{WEIGHTS} differs"):
        registered_adapter(read_lineage(CHAMPION, client))

    params = load_params(damaged / "params.yaml")
    champion = champion_version(client, params)

    def rescore(adapter: Path) -> dict[str, float]:
        raise AssertionError("a damaged champion must not be scored")

    # Another exam: the champion is re-scored before the decision, from its registered files.
    with pytest.raises(ArtifactMismatch, match=WEIGHTS):
        champion_score(client, params, champion, "another-eval-set", rescore)


def test_kontext_verify_names_the_damaged_registered_file(damaged):
    report = verify_project(damaged)
    assert [line for line in report["register"] if WEIGHTS in line and "differs" in line], report["register"]
    result = CliRunner().invoke(app, ["verify", "--params", str(damaged / "params.yaml")])
    assert result.exit_code == 1 and f"damaged: register: {CHAMPION[:-9]}/1" in result.output, result.output
