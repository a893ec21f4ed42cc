"""The Hugging Face backend on local datasets: lazy row references, composites, captions, bad rows."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from kontext_core.config import ConfigError, DatasetEntry
from kontext_core.data import huggingface as hf
from kontext_core.data.huggingface import HfRef, huggingface_records
from kontext_core.data.sources import open_ref, ref_digest, ref_size

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _composite(width: int, height: int = 20) -> bytes:
    img = Image.new("RGB", (width, height), RED)
    img.paste(Image.new("RGB", (width - width // 2, height), BLUE), (width // 2, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _rows() -> dict[str, list]:
    truncated = _composite(40)[:60]
    return {
        "image": [{"bytes": b, "path": None} for b in (_composite(40), _composite(40), _composite(41), truncated)],
        "description": [
            {"description_0": "plain 0", "description_1": "scene 0"},
            {"description_0": "plain 1", "description_1": None},
            {"description_0": "plain 2", "description_1": "scene 2"},
            {"description_0": "plain 3", "description_1": "scene 3"},
        ],
        "short": ["s0", "", "s2", "s3"],
        "tags": ["t0", "t1", "t2", "t3"],
    }


FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "description": {"description_0": datasets.Value("string"), "description_1": datasets.Value("string")},
        "short": datasets.Value("string"),
        "tags": datasets.Value("string"),
    }
)


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """The same rows as one parquet file and as a `save_to_disk` folder."""
    root = tmp_path_factory.mktemp("hf")
    table = datasets.Dataset.from_dict(_rows(), features=FEATURES)
    table.to_parquet(str(root / "rows.parquet"))
    table.save_to_disk(str(root / "saved"))
    return root


def _entry(name: str, select: int = 1, **hf_options) -> DatasetEntry:
    return DatasetEntry.model_validate(
        {
            "id": f"panel{select}",
            "type": "huggingface",
            "dataset_name": name,
            "caption_strategy": "huggingface",
            "huggingface": {
                "caption_column": "description.description_1",
                "composite_image_config": {"enabled": True, "image_count": 2, "select_index": select},
                **hf_options,
            },
        }
    )


def test_composite_rows_become_lazy_panel_records_with_problems_for_bad_rows(stored):
    records, problems = huggingface_records(_entry("rows.parquet"), stored)

    assert [r.key for r in records] == ["00000000", "00000001", "00000002"]
    assert [r.caption for r in records] == ["scene 0", None, "scene 2"]  # a row without its caption is kept
    # Row 2 is 41 wide: as in SimpleTuner the panel width is floored (20) and the row kept.
    assert [(r.width, r.height) for r in records] == [(20, 20), (20, 20), (20, 20)]
    assert all(r.image.startswith("hf:rows.parquet?") for r in records)  # project-relative, no files written
    assert {(p.path, p.kind) for p in problems} == {
        ("rows.parquet[1]", "missing_caption"),
        ("rows.parquet[3]", "unreadable"),
    }
    reasons = {p.kind: p.reason for p in problems}
    assert "truncated PNG" in reasons["unreadable"]
    floored = np.asarray(open_ref(records[2].image, stored))
    assert floored.shape == (20, 20, 3) and (floored == BLUE).all()  # columns 20..39; column 40 left out

    right = np.asarray(open_ref(records[0].image, stored))
    assert right.shape == (20, 20, 3) and (right == BLUE).all()
    assert ref_size(records[0].image, stored) == (20, 20)


def test_two_entries_over_one_dataset_pair_by_row_index(stored):
    left, _ = huggingface_records(_entry("saved", select=0), stored)
    right, _ = huggingface_records(_entry("saved", select=1), stored)
    assert [r.key for r in left] == [r.key for r in right]
    assert (np.asarray(open_ref(left[0].image, stored)) == RED).all()
    assert (np.asarray(open_ref(right[0].image, stored)) == BLUE).all()


def test_digest_is_content_based_and_stable(stored):
    from_parquet, _ = huggingface_records(_entry("rows.parquet"), stored)
    from_disk, _ = huggingface_records(_entry("saved"), stored)
    left, _ = huggingface_records(_entry("saved", select=0), stored)
    digest = ref_digest(from_parquet[0].image, stored)
    from kontext_core.data import hf_refs

    for cached in (hf._open_cached, hf._image_view, hf_refs._digest_cached):
        cached.cache_clear()
    assert ref_digest(from_parquet[0].image, stored) == digest  # reopened: same answer
    assert ref_digest(from_disk[0].image, stored) == digest  # same bytes stored another way
    assert ref_digest(left[0].image, stored) != digest  # the other panel
    assert ref_digest(from_parquet[1].image, stored) == digest  # rows 0 and 1 hold the same picture


def test_caption_list_first_non_empty_then_fallback(stored):
    entry = _entry(
        "rows.parquet", caption_column=["short", "description.description_1"], fallback_caption_column="tags"
    )
    records, problems = huggingface_records(entry, stored)
    assert [r.caption for r in records] == ["s0", "t1", "s2"]
    assert {p.kind for p in problems} == {"unreadable"}


def test_fetch_reads_headers_only(stored, decoded_images):
    records, _ = huggingface_records(_entry("saved"), stored)
    assert records and decoded_images == []
    open_ref(records[0].image, stored)
    assert decoded_images  # the spy does see a real decode


def test_config_errors_name_the_key(stored):
    with pytest.raises(ConfigError, match=r"huggingface.caption_column 'description.nope' not found") as err:
        huggingface_records(_entry("saved", caption_column="description.nope"), stored)
    assert "description_0, description_1" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"huggingface.image_column 'picture' not in saved"):
        huggingface_records(_entry("saved", image_column="picture"), stored)
    # A hub id that is not in the offline cache: one line naming the id and how to download it.
    not_cached = r"dataset 'no/such-dataset' \(revision 'main'\) is not in the Hugging Face cache"
    with pytest.raises(ConfigError, match=not_cached) as err:
        huggingface_records(_entry("no/such-dataset"), stored)
    assert "hf download --repo-type dataset no/such-dataset" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"unknown key 'caption_colum'; did you mean 'caption_column'"):
        DatasetEntry.model_validate({"id": "x", "huggingface": {"caption_colum": "x"}})


def test_reference_strings_round_trip():
    ref = HfRef("data/my sets/ünï?&=.parquet", "train[:10]", "img col", 7, "refs/pr/1", 2, 3)
    text = str(ref)
    assert text.startswith("hf:") and " " not in text
    assert HfRef.parse(text) == ref
    assert HfRef.parse(str(HfRef("org/name", "train", "image", 0))) == HfRef("org/name", "train", "image", 0)
    with pytest.raises(ValueError, match="malformed"):
        HfRef.parse("hf:org/name?split=train")


def test_row_ranges_on_worker_processes_give_the_serial_answer(stored, monkeypatch):
    monkeypatch.setattr(hf, "_PARALLEL_ROWS", 2)
    entry = _entry("saved", caption_column=["short", "description.description_1"], fallback_caption_column="tags")
    serial = huggingface_records(entry, stored, workers=1)
    pooled = huggingface_records(entry, stored, workers=2)
    assert pooled == serial
    assert [r.key for r in pooled[0]] == ["00000000", "00000001", "00000002"] and len(pooled[1]) == 1


def test_threads_opening_one_dataset_at_once_load_it_once(stored, monkeypatch):
    """cache_vae decodes on two threads: both may ask for a dataset before either has opened it.
    Loading it twice at once raced in `datasets`' own progress-bar lock ("type object 'tqdm' has no
    attribute '_lock'"); the second thread waits for the first one's load instead."""
    import threading
    import time

    real_load = hf._load
    loads = []

    def slow_load(*args):
        loads.append(args)
        time.sleep(0.3)  # both threads are inside the open before either returns
        return real_load(*args)

    monkeypatch.setattr(hf, "_load", slow_load)
    hf._open_cached.cache_clear()
    start = threading.Barrier(2)
    opened = []

    def open_it():
        start.wait()
        opened.append(hf.open_dataset(str(stored / "rows.parquet"), "train", None, stored))

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    hf._open_cached.cache_clear()
    assert len(opened) == 2 and opened[0] is opened[1]
    assert len(loads) == 1
