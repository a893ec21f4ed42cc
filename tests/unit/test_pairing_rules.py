"""Pairing rules: strict/loose crops, several reference sets, captions, orphans, limits, eval split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontext_core.config import (
    ConfigError,
    DatasetConfig,
    DatasetEntry,
    check_datasets_with_params,
    load_datasets,
    params_from_dict,
)
from kontext_core.data.buckets import apply_crop
from kontext_core.data.pairing import build_pairs
from kontext_core.data.records import Problem, Record


def _entry(**kw) -> DatasetEntry:
    return DatasetEntry.model_validate({"type": "local", "instance_data_dir": "x", **kw})


def _records(dataset_id: str, keys, size=(160, 96), caption="edit it") -> list[Record]:
    return [Record(dataset_id, k, f"{dataset_id}/{k}", caption, "local", *size) for k in keys]


def _config(edit: dict, *refs: dict) -> DatasetConfig:
    return DatasetConfig(entries=[_entry(**edit), *[_entry(**r) for r in refs]])


def _latent_grid(size) -> tuple[int, int]:
    return size[0] // 16, size[1] // 16


@pytest.mark.parametrize("style", ["center", "random", "corner"])
def test_strict_reference_takes_the_edit_crop_and_latent_grid(style):
    config = _config(
        {
            "id": "edit",
            "conditioning_data": ["ref"],
            "resolution": 64,
            "resolution_type": "pixel_area",
            "crop": True,
            "crop_style": style,
            "crop_aspect": "preserve",
        },
        {"id": "ref", "conditioning_type": "reference_strict", "caption_strategy": None},
    )
    records = {"edit": _records("edit", ["a.png", "b.png"]), "ref": _records("ref", ["a.png", "b.png"], (320, 192))}
    pairs, report = build_pairs(params_from_dict({}), config, records, [])
    assert len(pairs) == 2 and not report.failures
    rng = np.random.default_rng(1)
    for pair in pairs:
        ref = pair["references"][0]
        assert ref["crop"] == pair["crop"] and ref["size"] == pair["size"]
        target = apply_crop(Image.fromarray((rng.random((96, 160, 3)) * 255).astype("uint8")), pair["crop"])
        # The reference file is twice the edit's size; the plan brings it to the edit's size first.
        reference = apply_crop(Image.fromarray((rng.random((192, 320, 3)) * 255).astype("uint8")), ref["crop"])
        assert _latent_grid(reference.size) == _latent_grid(target.size) == _latent_grid(pair["size"])


def test_loose_reference_keeps_its_own_aspect_and_inherits_resolution():
    config = _config(
        {
            "id": "edit",
            "conditioning_data": "ref",
            "resolution": 128,
            "resolution_type": "pixel_area",
            "crop_aspect": "preserve",
        },
        {"id": "ref", "conditioning_type": "reference_loose", "caption_strategy": None},
    )
    records = {"edit": _records("edit", ["a.png"], (128, 128)), "ref": _records("ref", ["a.png"], (400, 100))}
    pairs, _ = build_pairs(params_from_dict({}), config, records, [])
    pair = pairs[0]
    ref = pair["references"][0]
    assert pair["size"] == [128, 128]
    # Inherited resolution 128 pixel_area at aspect 4: its own wide bucket, not the target's.
    assert ref["size"][0] > ref["size"][1] and ref["size"] != pair["size"]
    assert ref["crop"]["source"] == [400, 100]


def test_combined_two_reference_sets_give_two_references_and_the_edit_caption():
    config = _config(
        {"id": "edit", "conditioning_data": ["ref1", "ref2"], "resolution": 64, "resolution_type": "pixel_area"},
        {"id": "ref1", "conditioning_type": "reference_strict", "caption_strategy": None},
        {"id": "ref2", "conditioning_type": "reference_strict", "caption_strategy": None},
    )
    records = {
        "edit": _records("edit", ["a.png", "b.png"]),
        "ref1": _records("ref1", ["a.png", "b.png"]),
        "ref2": _records("ref2", ["a.png", "b.png"]),
    }
    params = params_from_dict({"conditioning_multidataset_sampling": "combined"})
    check_datasets_with_params(params, config, "params")
    pairs, _ = build_pairs(params, config, records, [])
    assert [len(p["references"]) for p in pairs] == [2, 2]
    assert [r["dataset_id"] for r in pairs[0]["references"]] == ["ref1", "ref2"]
    assert all(p["caption"] == "edit it" and all(r["caption"] is None for r in p["references"]) for p in pairs)


def test_caption_on_a_conditioning_set_under_combined_is_a_config_error():
    config = _config(
        {"id": "edit", "conditioning_data": ["ref1", "ref2"]},
        {"id": "ref1", "caption_strategy": "textfile"},
        {"id": "ref2", "caption_strategy": None},
    )
    combined = params_from_dict({"conditioning_multidataset_sampling": "combined"})
    with pytest.raises(ConfigError, match="dataset 'ref1' sets caption_strategy"):
        check_datasets_with_params(combined, config, "params")
    check_datasets_with_params(params_from_dict({}), config, "params")  # fine under random
    generated = DatasetConfig(entries=[_entry(id="e", conditioning=[{"type": "jpeg_artifacts", "captions": "fix"}])])
    with pytest.raises(ConfigError, match="conditioning 'jpeg_artifacts' sets captions"):
        check_datasets_with_params(combined, generated, "params")


def test_random_sampling_with_several_sets_carries_reference_captions():
    config = _config(
        {"id": "edit", "conditioning_data": ["ref1", "ref2"]},
        {"id": "ref1", "caption_strategy": "textfile"},
        {"id": "ref2", "caption_strategy": None},
    )
    records = {
        "edit": _records("edit", ["a.png"]),
        "ref1": _records("ref1", ["a.png"], caption="ref1 caption"),
        "ref2": _records("ref2", ["a.png"], caption="filename caption"),
    }
    pairs, _ = build_pairs(params_from_dict({}), config, records, [])
    assert pairs[0]["caption"] == "edit it"
    assert [r["caption"] for r in pairs[0]["references"]] == ["ref1 caption", None]


def test_missing_and_orphan_references_are_reported_and_the_run_continues():
    config = _config({"id": "edit", "conditioning_data": ["ref"]}, {"id": "ref", "caption_strategy": None})
    records = {
        "edit": _records("edit", ["a.png", "b.png", "c.png"]),
        "ref": _records("ref", ["a.png", "b.png", "orphan.png"]),
    }
    pairs, report = build_pairs(params_from_dict({}), config, records, [])
    assert [p["key"] for p in pairs] == ["a.png", "b.png"]
    kinds = {(p["kind"], p["path"]) for p in report.problems}
    assert ("missing_reference", "edit/c.png") in kinds and ("orphan_reference", "ref/orphan.png") in kinds
    data = report.to_dict()["datasets"]
    assert data["edit"]["missing_references"] == ["edit/c.png"] and data["ref"]["orphan_references"] == [
        "ref/orphan.png"
    ]
    assert not report.failures  # 1 of 3 lost is within the default max_missing_fraction 0.5
    strict = build_pairs(params_from_dict({"pair": {"max_missing_fraction": 0.2}}), config, records, [])[1]
    assert strict.failures and "pair.max_missing_fraction = 0.2" in strict.failures[0]


def test_report_counts_unreadable_small_and_uncaptioned_images_and_a_bucket_histogram():
    config = _config(
        {
            "id": "edit",
            "conditioning_data": ["ref"],
            "resolution": 64,
            "resolution_type": "pixel_area",
            "minimum_image_size": 64,
        },
        {"id": "ref", "caption_strategy": None},
    )
    edit = _records("edit", ["a.png", "b.png"], (96, 96))
    edit.append(Record("edit", "tiny.png", "edit/tiny.png", "x", "local", 32, 32))
    edit.append(Record("edit", "nocap.png", "edit/nocap.png", None, "local", 96, 96))
    records = {"edit": edit, "ref": _records("ref", ["a.png", "b.png", "tiny.png", "nocap.png"], (8, 8))}
    problems = [Problem("edit", "edit/broken.png", "truncated file", "unreadable")]
    pairs, report = build_pairs(params_from_dict({}), config, records, problems)
    stats = report.to_dict()["datasets"]["edit"]
    assert stats["images"] == 5 and stats["pairs"] == 3
    assert stats["too_small"] == ["edit/tiny.png"]  # the tiny *reference* files do not filter anything
    assert stats["unreadable"] == [{"path": "edit/broken.png", "reason": "truncated file"}]
    assert stats["missing_captions"] == ["edit/nocap.png"]
    assert stats["buckets"] == {"64x64": 3}
    md = report.to_markdown()
    assert "| edit | edit | 5 | 3 |" in md and "too_small" in md


def test_zero_usable_pairs_is_a_one_line_failure():
    config = _config({"id": "edit", "conditioning_data": ["ref"]}, {"id": "ref", "caption_strategy": None})
    records = {"edit": _records("edit", ["a.png"]), "ref": _records("ref", ["z.png"])}
    pairs, report = build_pairs(params_from_dict({"pair": {"max_missing_fraction": 1.0}}), config, records, [])
    assert pairs == [] and len(report.failures) == 1
    assert report.failures[0].startswith("dataset 'edit' yields no usable pairs") and "\n" not in report.failures[0]


def test_eval_dataset_pairs_are_held_out_with_their_references():
    config = _config(
        {"id": "train", "conditioning_data": ["train-ref"]},
        {"id": "train-ref", "caption_strategy": None},
        {"id": "held", "conditioning_data": ["held-ref"]},
        {"id": "held-ref", "caption_strategy": None},
    )
    records = {k: _records(k, ["a.png"]) for k in ["train", "train-ref", "held", "held-ref"]}
    params = params_from_dict({"eval_dataset_id": "held"})
    check_datasets_with_params(params, config, "params")
    pairs, _ = build_pairs(params, config, records, [])
    assert {(p["dataset_id"], p["split"]) for p in pairs} == {("train", "train"), ("held", "eval")}
    assert next(p for p in pairs if p["split"] == "eval")["references"][0]["dataset_id"] == "held-ref"
    with pytest.raises(ConfigError, match="eval_dataset_id = 'held-ref'"):
        check_datasets_with_params(params_from_dict({"eval_dataset_id": "held-ref"}), config, "params")


def test_generated_set_is_strict_by_default_and_its_captions_replace_the_edit_caption():
    config = DatasetConfig(
        entries=[
            _entry(
                id="sharp",
                resolution=64,
                resolution_type="pixel_area",
                crop=True,
                crop_style="random",
                conditioning=[{"type": "superresolution", "captions": ["deblur", "sharpen"]}],
            )
        ]
    )
    pairs, _ = build_pairs(params_from_dict({}), config, {"sharp": _records("sharp", ["a.png", "b.png"])}, [])
    for pair in pairs:
        ref = pair["references"][0]
        assert ref["dataset_id"] == "sharp_conditioning_superresolution"
        assert ref["image"] == f"data/degrade/sharp_conditioning_superresolution/{pair['key']}.png"
        assert ref["crop"] == pair["crop"] and ref["conditioning_type"] == "reference_strict"
        assert pair["caption"] in {"deblur", "sharpen"} and ref["caption"] is None
        assert ref["generated"]["source"] == pair["target"] and ref["generated"]["type"] == "superresolution"


def test_dataset_cross_checks_name_the_key(tmp_path: Path):
    (tmp_path / "x").mkdir()

    def load(entries):
        path = tmp_path / "db.json"
        path.write_text(json.dumps(entries))
        return load_datasets(path, base_dir=tmp_path)

    base = {"type": "local", "instance_data_dir": "x"}
    with pytest.raises(ConfigError, match="conditioning_data names 'r', which is disabled"):
        load([{"id": "e", "conditioning_data": "r", **base}, {"id": "r", "disabled": True, **base}])
    with pytest.raises(ConfigError, match="conditioning_data names the dataset itself"):
        load([{"id": "e", "conditioning_data": "e", **base}])
    with pytest.raises(ConfigError, match="generated set id 'e_conditioning_jpeg_artifacts'"):
        load(
            [
                {"id": "e", "conditioning": [{"type": "jpeg_artifacts"}], **base},
                {"id": "e_conditioning_jpeg_artifacts", **base},
            ]
        )
