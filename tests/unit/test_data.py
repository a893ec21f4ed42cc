from pathlib import Path

import numpy as np
from PIL import Image

from kontext_core.config import ConditioningGenerator, DatasetConfig, DatasetEntry, params_from_dict
from kontext_core.data.buckets import target_size
from kontext_core.data.degrade import degrade, pick_caption
from kontext_core.data.huggingface import huggingface_records
from kontext_core.data.local import local_records
from kontext_core.data.pairing import build_pairs
from kontext_core.data.samples import write_sample_data
from kontext_core.data.sources import open_ref
from kontext_core.fsutil import sha256_tree


def test_sample_data_is_deterministic(tmp_path):
    write_sample_data(tmp_path / "a", count=2, size=48, seed=1)
    write_sample_data(tmp_path / "b", count=2, size=48, seed=1)
    for sub in ("pairs", "pairs-eval", "clean"):
        assert sha256_tree(tmp_path / "a" / sub) == sha256_tree(tmp_path / "b" / sub)
    edited = np.asarray(Image.open(tmp_path / "a/pairs/edited/pair_000.png"), dtype=int)
    reference = np.asarray(Image.open(tmp_path / "a/pairs/reference/pair_000.png"), dtype=int)
    assert np.array_equal(edited, 255 - reference)


def test_hf_composite_split_and_dotted_captions(tmp_path):
    write_sample_data(tmp_path / "s", count=3, size=40, seed=0)
    entry = DatasetEntry.model_validate(
        {
            "id": "right",
            "type": "huggingface",
            "dataset_name": str(tmp_path / "s/subjects200k"),
            "caption_strategy": "huggingface",
            "huggingface": {
                "caption_column": "description.description_1",
                "composite_image_config": {"enabled": True, "image_count": 2, "select_index": 1},
            },
        }
    )
    records, problems = huggingface_records(entry, tmp_path)
    assert problems == []
    assert [r.key for r in records] == ["00000000", "00000001", "00000002"]
    assert open_ref(records[0].image, tmp_path).size == (40, 40)
    assert records[0].caption.startswith("put the red")


def _entry(**kw) -> DatasetEntry:
    return DatasetEntry.model_validate({"id": "d", "type": "local", "instance_data_dir": "x", **kw})


def test_buckets_round_to_multiples_of_64():
    assert target_size(96, 96, _entry(resolution=64, resolution_type="pixel_area")) == (64, 64)
    w, h = target_size(300, 200, _entry(resolution=128, resolution_type="pixel", crop_aspect="preserve"))
    assert (w, h) == (192, 128)


def test_degrade_is_deterministic_per_seed_and_key():
    img = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8"))
    gen = ConditioningGenerator(type="superresolution", blur_radius=1.5, noise_level=0.05)
    a = np.asarray(degrade(img, gen, 7, "k"))
    assert np.array_equal(a, np.asarray(degrade(img, gen, 7, "k")))
    assert not np.array_equal(a, np.asarray(degrade(img, gen, 7, "other")))
    gen_list = ConditioningGenerator(type="superresolution", captions=["a", "b", "c"])
    assert pick_caption(gen_list, 1, "k") == pick_caption(gen_list, 1, "k")


def test_pairing_reports_missing_reference_and_bad_caption(tmp_path):
    edit, ref = tmp_path / "edit", tmp_path / "ref"
    edit.mkdir()
    ref.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (32, 32)).save(edit / f"{name}.png")
    (edit / "a.txt").write_text("make it red")
    (edit / "b.txt").write_bytes(b"\xff\xfe bad")
    (edit / "c.txt").write_text("make it blue")
    Image.new("RGB", (32, 32)).save(ref / "a.png")
    Image.new("RGB", (32, 32)).save(ref / "b.png")
    (ref / "c.png").write_text("not an image")
    entries = [
        DatasetEntry.model_validate(
            {
                "id": "edit",
                "instance_data_dir": str(edit),
                "caption_strategy": "textfile",
                "conditioning_data": ["ref"],
                "conditioning_type": None,
                "resolution": 32,
            }
        ),
        DatasetEntry.model_validate(
            {
                "id": "ref",
                "instance_data_dir": str(ref),
                "caption_strategy": None,
                "conditioning_type": "reference_loose",
            }
        ),
    ]
    config = DatasetConfig(entries=entries)
    records, problems = {}, []
    for e in entries:
        recs, probs = local_records(e, tmp_path)
        records[e.id] = recs
        problems += probs
    pairs, report = build_pairs(params_from_dict({}), config, records, problems, tmp_path / "deg", str, Path)
    assert [p["key"] for p in pairs] == ["a.png", "b.png"]
    reasons: dict[str, str] = {}
    for problem in report.problems:
        reasons[Path(problem["path"]).name] = reasons.get(Path(problem["path"]).name, "") + problem["reason"] + ";"
    assert "not UTF-8" in reasons["b.png"]
    assert "c.png" in reasons  # unreadable loose reference, reported by path
    assert report.datasets["edit"].pairs == 2
    assert "Pre-flight report" in report.to_markdown()


def test_registry_champion_rule():
    from kontext_core.tracking.registry import beats

    assert beats(12.0, None, True)
    assert beats(12.0, 11.0, True) and not beats(11.0, 11.0, True)
    assert beats(0.1, 0.2, False) and not beats(0.3, 0.2, False)
