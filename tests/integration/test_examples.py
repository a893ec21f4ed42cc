"""SimpleTuner's Kontext quickstart dataset configs (config/examples) load unchanged and run fetch, pair, degrade.

Their path values point at the sample data `init` writes; everything else is as in the quickstart,
including the eval split's `minimum_image_size: 1024`, so the samples are written at 1024 px here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.config import ConditioningGenerator
from kontext_core.data.buckets import apply_crop
from kontext_core.data.degrade import degrade
from kontext_core.data.sources import open_ref
from kontext_core.stages import run_stage
from tests.conftest import make_project, write_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("examples") / "base"
    params = make_project(root, sample_data={"seed": 0, "count": 2, "size": 1024})
    run_stage("init", params)
    return root


def _project(sample_project: Path, tmp_path: Path, example: str, **params) -> Path:
    project = tmp_path / "p"
    shutil.copytree(sample_project, project)
    write_params(project / "params.yaml", data_backend_config=f"config/examples/{example}", **params)
    result = CliRunner().invoke(app, ["config", "check", "--params", str(project / "params.yaml")])
    assert result.exit_code == 0, result.output
    for stage in ("fetch", "pair", "degrade"):
        run_stage(stage, project / "params.yaml")
    return project


def _json(project: Path, rel: str):
    return json.loads((project / rel).read_text())


def _sharpness(img) -> float:
    return float(np.abs(np.diff(np.asarray(img.convert("L"), dtype=float), axis=1)).mean())


def test_two_folder_reference_strict(sample_project, tmp_path):
    project = _project(sample_project, tmp_path, "kontext-two-folder.json", eval_dataset_id=None)
    pairs = _json(project, "data/pair/pairs.json")
    assert len(pairs) == 2 and {p["split"] for p in pairs} == {"train"}
    for pair in pairs:
        ref = pair["references"][0]
        assert ref["dataset_id"] == "my-reference-images" and ref["crop"] == pair["crop"]
        assert pair["size"] == [1024, 1024] and pair["caption"].startswith("invert the colours")
        target = apply_crop(open_ref(pair["target"], project), pair["crop"])
        reference = apply_crop(open_ref(ref["image"], project), ref["crop"])
        assert target.size == reference.size == (1024, 1024)


def test_eval_split_with_subjects200k_composites(sample_project, tmp_path):
    project = _project(sample_project, tmp_path, "kontext-eval-split.json", eval_dataset_id="edited-images")
    pairs = _json(project, "data/pair/pairs.json")
    evals = [p for p in pairs if p["split"] == "eval"]
    train = [p for p in pairs if p["split"] == "train"]
    assert {p["dataset_id"] for p in evals} == {"edited-images"} and len(evals) == 2
    assert all(p["references"][0]["dataset_id"] == "reference-images" for p in evals)
    assert {p["dataset_id"] for p in train} == {"subjects200k-left"} and len(train) == 2
    for pair in train:
        # Left panel (description_0) is the target; the right panel is its strict reference.
        assert pair["caption"].endswith("on a plain white background")
        assert pair["size"] == [512, 512] and pair["references"][0]["crop"] == pair["crop"]
        assert "panel=0/2" in pair["target"] and "panel=1/2" in pair["references"][0]["image"]
    report = _json(project, "data/pair/report.json")
    assert "text-embed-cache" not in report["datasets"]
    assert report["datasets"]["edited-images"]["too_small"] == []


def test_deblur_superresolution(sample_project, tmp_path):
    project = _project(sample_project, tmp_path, "kontext-deblur.json", eval_dataset_id=None)
    pairs = _json(project, "data/pair/pairs.json")
    assert len(pairs) == 2
    captions = {"enhance sharpness", "deblur", "increase clarity", "sharpen image"}
    for pair in pairs:
        ref = pair["references"][0]
        assert ref["dataset_id"] == "high-quality-images_conditioning_superresolution"
        assert ref["generated"]["blur_radius"] == 3.0 and ref["generated"]["noise_level"] == 0.02
        assert pair["caption"] in captions
        blurred, sharp = open_ref(ref["image"], project), open_ref(pair["target"], project)
        assert blurred.size == sharp.size
        # The source's digest travels with it (fetch hashed it once), and it is the source file's content.
        source = ref["generated"]["source"]
        assert ref["generated"]["source_digest"] == hashlib.sha256((project / source).read_bytes()).hexdigest()
        spec = {k: v for k, v in ref["generated"].items() if k not in ("source", "source_digest")}
        generator = ConditioningGenerator.model_validate(spec)
        # Exactly the generator's output for this (seed, file), at the source size.
        assert np.array_equal(np.asarray(blurred), np.asarray(degrade(sharp, generator, 42, pair["key"])))
        assert _sharpness(blurred.resize((256, 256), Image.BOX)) < _sharpness(sharp.resize((256, 256), Image.BOX))
    assert _json(project, "artifacts/manifests/degrade.json")["info"]["generated"] == 2


def test_jpeg_artifacts_resume_from_the_persisted_store(sample_project, tmp_path):
    project = _project(sample_project, tmp_path, "kontext-jpeg.json", eval_dataset_id=None)
    pairs = _json(project, "data/pair/pairs.json")
    for pair in pairs:
        ref = pair["references"][0]
        assert ref["generated"]["quality_range"] == [10, 30] and ref["generated"]["compression_rounds"] == 2
        assert pair["caption"] in {"remove compression artifacts", "restore quality", "fix jpeg artifacts"}
        jpeg = np.asarray(open_ref(ref["image"], project), dtype=float)
        clean = np.asarray(open_ref(pair["target"], project), dtype=float)
        assert jpeg.shape == clean.shape and 0 < np.abs(jpeg - clean).mean() < 40
    # A lost stage output is rebuilt from cache/degrade without generating again.
    shutil.rmtree(project / "data/degrade")
    manifest = run_stage("degrade", project / "params.yaml")
    assert not manifest["skipped"] and manifest["info"] == {"generated": 0, "reused": 2}


def test_pair_stage_fails_in_one_line_above_max_missing_fraction(sample_project, tmp_path):
    project = _project(sample_project, tmp_path, "kontext-two-folder.json", eval_dataset_id=None)
    (project / "data/samples/pairs/reference/pair_001.png").unlink()
    write_params(project / "params.yaml", pair={"max_missing_fraction": 0.25})
    run_stage("fetch", project / "params.yaml")
    with pytest.raises(RuntimeError) as failure:
        run_stage("pair", project / "params.yaml")
    message = str(failure.value)
    assert "\n" not in message and "dataset 'my-edited-images' lost 50%" in message
    assert "pair.max_missing_fraction = 0.25" in message
    report = (project / "artifacts/preflight_failed/report.md").read_text()
    assert "data/samples/pairs/edited/pair_001.png" in report and "missing_reference" in report
    assert (project / "data/pair/pairs.json").exists()  # the previous run's outputs are kept
