"""Nothing damaged is trusted: each kind of damage is named by `kontext verify`, makes exactly the stage
that wrote it run again on the next run, and is repaired byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kontext_core.stages import STAGE_ORDER, run_stage
from kontext_core.stages.engine import read_manifest
from kontext_core.stages.verify import verify_project

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _first(folder: Path, pattern: str) -> Path:
    return sorted(folder.rglob(pattern))[0]


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _damage(project: Path) -> dict[str, str]:
    """Damage one output of several stages in a different way; returns {stage: damaged relative path}."""
    damaged = {}
    latent = _first(project / "cache/vae", "*.safetensors")
    _truncate(latent, 100)  # a latent cut short mid-write by a full disk
    damaged["cache_vae"] = latent.relative_to(project).as_posix()
    embed = _first(project / "cache/text", "*.safetensors")
    _truncate(embed, embed.stat().st_size - 7)
    damaged["cache_text"] = embed.relative_to(project).as_posix()
    weights = _first(project / "models/quantized", "*.safetensors")
    _truncate(weights, weights.stat().st_size // 2)
    damaged["quantize"] = weights.relative_to(project).as_posix()
    adapter = _first(project / "models/adapter", "*.safetensors")
    adapter.unlink()  # a file deleted inside a folder that still exists
    damaged["train"] = adapter.relative_to(project).as_posix()
    records = project / "data/fetch/records.jsonl"
    text = records.read_text()
    records.write_text(text.replace('"', "'", 1))  # same size, other content
    damaged["fetch"] = "data/fetch/records.jsonl"
    reference = _first(project / "cache/degrade", "*.png")
    _truncate(reference, 20)
    damaged["degrade"] = reference.relative_to(project).as_posix()
    return damaged


def test_each_damage_is_named_then_repaired_by_the_stage_that_wrote_it(project_copy):
    project = project_copy
    before = {name: read_manifest(project, name)["outputs"] for name in STAGE_ORDER}
    damaged = _damage(project)

    report = verify_project(project)
    for stage, rel in damaged.items():
        assert any(line.startswith(rel) for line in report[stage]), (stage, rel, report[stage])
    assert not any(report[name] for name in STAGE_ORDER if name not in damaged)

    result = CliRunner().invoke(_app(), ["verify", "--params", str(project / "params.yaml")])
    assert result.exit_code == 1
    assert all(f"damaged: {stage}: {rel}" in result.output for stage, rel in damaged.items()), result.output

    ran = {name for name in STAGE_ORDER if not run_stage(name, project / "params.yaml")["skipped"]}
    # The damaged stages ran again. Train's outputs name the MLflow run that made them, so what reads
    # them (validate, register) runs too; every other stage was left alone.
    assert ran == set(damaged) | {"validate", "register"}
    assert verify_project(project) == {name: [] for name in STAGE_ORDER}
    after = {name: read_manifest(project, name)["outputs"] for name in STAGE_ORDER}
    repaired = {rel for stage, rel in damaged.items() for rel in before[stage] if rel != "artifacts/train"}
    assert {rel: h for m in after.values() for rel, h in m.items() if rel in repaired} == {
        rel: h for m in before.values() for rel, h in m.items() if rel in repaired
    }
    # The same adapter bytes: register reused its version instead of making a second one.
    assert _versions(project) == 1


def _versions(project: Path) -> int:
    import mlflow

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return len(client.search_model_versions("name = 'kontext-lora'"))


def test_force_recomputes_a_truncated_cache_entry_and_get_names_the_file(project_copy):
    from kontext_core.cache.store import TensorStore

    project = project_copy
    latent = _first(project / "cache/vae", "*.safetensors")
    store = TensorStore(latent.parent.parent)
    _truncate(latent, 50)
    with pytest.raises(RuntimeError, match=latent.name):
        store.get(latent.stem)
    manifest = run_stage("cache_vae", project / "params.yaml", force=True)
    assert manifest["info"]["encoded"] >= 1
    assert store.has(latent.stem) and store.get(latent.stem)


def test_an_old_manifest_without_file_sizes_is_checked_by_hash(project_copy):
    from kontext_core.stages import outputs_intact
    from kontext_core.stages.engine import manifest_path

    project = project_copy
    path = manifest_path(project, "pair")
    manifest = json.loads(path.read_text())
    manifest.pop("files")  # as written before file listings existed
    path.write_text(json.dumps(manifest))
    assert outputs_intact("pair", project)
    pairs = project / "data/pair/pairs.json"
    pairs.write_text(pairs.read_text() + " ")
    assert not outputs_intact("pair", project)


def _app():
    from flows.cli import app

    return app
