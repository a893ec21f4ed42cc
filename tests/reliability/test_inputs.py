"""Odd input is refused in one line naming the key or path and the limit, before anything runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.config import ConfigError, DatasetEntry

pytestmark = pytest.mark.reliability

runner = CliRunner()


def _project(tmp_path: Path, dataset: dict | None = None, **params) -> Path:
    """A project whose dataset file is one small local folder (so only the key under test is wrong)."""
    import json

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "imgs").mkdir(exist_ok=True)
    entry = {
        "id": "imgs",
        "type": "local",
        "instance_data_dir": "imgs",
        "resolution": 64,
        "caption_strategy": "filename",
    }
    entry |= {"conditioning": [{"type": "superresolution"}], **(dataset or {})}
    (tmp_path / "datasets.json").write_text(json.dumps([entry]))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"max_train_steps": 6, "data_backend_config": "datasets.json", **params}))
    return path


def _one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    ("params", "named", "why"),
    [
        ({"lora_rank": 1_000_000_000}, "lora_rank", "at most 1024"),
        ({"train_batch_size": 100_000}, "train_batch_size", "at most 256"),
        ({"vae_batch_size": 100_000}, "vae_batch_size", "at most 1024"),
        ({"resolution": 100_000}, "resolution", "exceeds 8192"),
        ({"resolution": 500, "resolution_type": "area"}, "resolution", "megapixels"),
        ({"validation_resolution": "65536x65536"}, "validation_resolution", "at most 8192"),
    ],
)
def test_sizes_that_would_exhaust_memory_are_refused_with_the_reason(tmp_path, params, named, why):
    line = _one_line_error(["config", "check", "--params", str(_project(tmp_path, **params))])
    assert named in line and why in line


def test_a_dataset_resolution_that_would_exhaust_memory_is_refused(tmp_path):
    line = _one_line_error(["config", "check", "--params", str(_project(tmp_path, {"resolution": 100_000}))])
    assert "dataset 'imgs'" in line and "resolution = 100000" in line and "exceeds 8192" in line


def test_an_empty_params_file_is_refused_unless_defaults_are_allowed(tmp_path, monkeypatch):
    path = tmp_path / "params.yaml"
    path.write_text("# nothing chosen yet\n")
    monkeypatch.delenv("KONTEXT_ALLOW_DEFAULT_PARAMS", raising=False)
    line = _one_line_error(["stage", "init", "--params", str(path)])
    assert str(path) in line and "is empty" in line and "KONTEXT_ALLOW_DEFAULT_PARAMS=1" in line

    from kontext_core.config import load_params

    monkeypatch.setenv("KONTEXT_ALLOW_DEFAULT_PARAMS", "1")
    assert load_params(path).lora_rank == 16


def test_a_folder_given_as_a_file_is_named_as_a_folder(tmp_path):
    (tmp_path / "params.yaml").mkdir()
    line = _one_line_error(["config", "check", "--params", str(tmp_path / "params.yaml")])
    assert "is a folder" in line
    params = _project(tmp_path / "p", data_backend_config="imgs")
    line = _one_line_error(["config", "check", "--params", str(params)])
    assert "imgs: is a folder" in line


def test_a_symlink_loop_among_images_is_a_problem_not_a_crash(tmp_path):
    from PIL import Image

    from kontext_core.data.local import local_records
    from kontext_core.data.scan import folder_digest

    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (32, 32)).save(root / "good.png")
    os.symlink("b.png", root / "a.png")
    os.symlink("a.png", root / "b.png")
    os.symlink("loop", root / "loop")
    entry = DatasetEntry(id="d", type="local", instance_data_dir=str(root), caption_strategy="filename")
    records, problems = local_records(entry, tmp_path)
    assert [r.key for r in records] == ["good.png"]
    assert {Path(p.path).name for p in problems} == {"a.png", "b.png", "loop"}
    assert all("symlink cannot be resolved" in p.reason for p in problems)
    assert folder_digest(root)  # the fingerprint walks past the loops too


def test_an_empty_parquet_beside_a_good_one_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kontext_core.data.huggingface import huggingface_records

    folder = tmp_path / "ds" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"image": [b"x"], "caption": ["c"]}), folder / "train-0.parquet")
    (folder / "train-1.parquet").write_bytes(b"")
    entry = DatasetEntry.model_validate(
        {
            "id": "hf",
            "type": "huggingface",
            "dataset_name": "ds",
            "caption_strategy": "huggingface",
            "huggingface": {"caption_column": "caption", "image_column": "image"},
        }
    )
    with pytest.raises(ConfigError) as refused:
        huggingface_records(entry, tmp_path)
    message = str(refused.value)
    assert "train-1.parquet" in message and "empty (0 bytes)" in message and "\n" not in message


@pytest.mark.slow
def test_an_expected_failure_under_kontext_run_is_one_line_without_prefect_tracebacks(
    tmp_path, mlflow_db, prefect_harness, capfd, monkeypatch
):
    """A dataset folder removed after `config check`: fetch refuses inside the Prefect flow; Prefect's
    own log of the failure keeps its message but not the traceback."""
    import json
    import shutil

    from tests.conftest import make_project

    monkeypatch.delenv("KONTEXT_DEBUG", raising=False)
    params = make_project(
        tmp_path / "p", mlflow_db=mlflow_db, data_backend_config="datasets.json", eval_dataset_id=None, shared_init=True
    )
    images = tmp_path / "p" / "imgs"
    images.mkdir()
    entry = {"id": "imgs", "type": "local", "instance_data_dir": "imgs", "caption_strategy": "filename"}
    entry["conditioning"] = [{"type": "superresolution"}]
    (tmp_path / "p" / "datasets.json").write_text(json.dumps([entry]))
    shutil.rmtree(images)

    result = CliRunner().invoke(app, ["run", "--no-dvc-commit", "--params", str(params)])
    captured = capfd.readouterr()
    everything = result.output + captured.out + captured.err
    assert result.exit_code == 2, everything[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "instance_data_dir 'imgs' is not a folder" in errors[0], result.stderr
    assert "Traceback" not in everything, everything[-5000:]
