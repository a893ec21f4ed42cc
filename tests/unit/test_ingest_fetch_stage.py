"""The fetch stage on a small project: the record table, problem kinds, disabled entries, the scan cache."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import datasets
from PIL import Image

from kontext_core.config import params_from_dict
from kontext_core.data.images import default_max_pixels
from kontext_core.data.scan import load_scan_cache
from kontext_core.stages import SCAN_CACHE_DIR, STAGES, StageContext
from kontext_core.stages.fetch import dataset_inputs as _dataset_inputs
from kontext_core.stages.fetch import stage_fetch
from tests.conftest import fetched_records


def _project(tmp: Path) -> Path:
    folder = tmp / "photos"
    folder.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (32, 16)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"caption {name}")
    (folder / "broken.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (64, 16)).save(buf, format="PNG")
    rows = {"image": [{"bytes": buf.getvalue(), "path": None}], "caption": ["a composite"]}
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp / "rows.parquet"))
    entries = [
        {
            "id": "photos",
            "type": "local",
            "instance_data_dir": "photos",
            "caption_strategy": "textfile",
            "conditioning_data": ["rows"],
        },
        {
            "id": "rows",
            "type": "huggingface",
            "dataset_name": "rows.parquet",
            "caption_strategy": "huggingface",
            "conditioning_type": "reference_loose",
            "huggingface": {"composite_image_config": {"enabled": True, "image_count": 2, "select_index": 1}},
        },
        {"id": "gone", "type": "local", "instance_data_dir": "does/not/exist", "disabled": True},
        {"id": "text", "dataset_type": "text_embeds", "default": True, "type": "local", "cache_dir": "cache/text"},
    ]
    (tmp / "datasets.json").write_text(json.dumps(entries))
    return tmp


def test_fetch_writes_records_and_kinds_and_persists_the_scan_cache(tmp_path):
    project = _project(tmp_path)
    params = params_from_dict({"data_backend_config": "datasets.json"})
    stage_fetch(StageContext(name="fetch", params=params, workdir=project))

    fetched = fetched_records(project)
    assert set(fetched["records"]) == {"photos", "rows"}  # disabled and text_embeds entries are skipped
    photos = fetched["records"]["photos"]
    assert [(r["key"], r["image"], r["caption"], r["width"], r["height"]) for r in photos] == [
        ("a.png", "photos/a.png", "caption a", 32, 16),
        ("b.png", "photos/b.png", "caption b", 32, 16),
    ]
    (row,) = fetched["records"]["rows"]
    assert row["image"].startswith("hf:rows.parquet?") and (row["width"], row["height"]) == (32, 16)
    assert fetched["problems"] == [
        {
            "dataset_id": "photos",
            "path": "photos/broken.png",  # project-relative, as every stored path
            "reason": "empty file (0 bytes)",
            "kind": "unreadable",
        }
    ]
    cache = load_scan_cache(project / SCAN_CACHE_DIR / "photos.json", default_max_pixels())
    assert sorted(cache) == ["photos/a.png", "photos/b.png", "photos/broken.png"]
    assert SCAN_CACHE_DIR in STAGES["fetch"].persist


def test_dataset_fingerprint_needs_a_hub_id_resolved_and_hashes_local_files(tmp_path):
    import pytest

    from kontext_core.config import ConfigError

    project = _project(tmp_path)
    params = params_from_dict({"data_backend_config": "datasets.json"})
    before = _dataset_inputs(params, project)
    entries = json.loads((project / "datasets.json").read_text())
    hub = {"id": "hub", "type": "huggingface", "dataset_name": "someone/not-downloaded", "revision": "abc"}
    entries.append({**hub, "caption_strategy": "huggingface", "conditioning_type": "reference_loose"})
    (project / "datasets.json").write_text(json.dumps(entries))
    # Offline (as every test runs) and not in the cache: one line naming it, never "revision abc".
    with pytest.raises(ConfigError, match="someone/not-downloaded.*'abc'.*hf download"):
        _dataset_inputs(params, project)
    entries.pop()
    (project / "datasets.json").write_text(json.dumps(entries))
    Image.new("RGB", (8, 8), (1, 2, 3)).save(project / "photos/a.png")
    after = _dataset_inputs(params, project)
    assert after["dataset:photos"] != before["dataset:photos"]
    assert after["dataset:rows"] == before["dataset:rows"]


def test_dataset_fingerprint_reuses_file_hashes_by_size_and_mtime(tmp_path):
    from kontext_core import fsutil
    from kontext_core.stages import DATASET_HASH_DIR

    project = _project(tmp_path)
    params = params_from_dict({"data_backend_config": "datasets.json"})
    first = _dataset_inputs(params, project)["dataset:photos"]
    memo = (project / DATASET_HASH_DIR / "photos.json").read_text().splitlines()
    assert [json.loads(line)[0] for line in memo[1:]] == ["a.png", "a.txt", "b.png", "b.txt", "broken.png"]

    # A new process (no in-memory hashes) trusts the memo for a file whose size and mtime are unchanged:
    # rewriting a caption with same-length text and restoring its mtime goes unnoticed, by design.
    fsutil._FILE_HASHES.clear()
    caption = project / "photos/a.txt"
    stat = caption.stat()
    caption.write_text("caption A")
    os.utime(caption, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _dataset_inputs(params, project)["dataset:photos"] == first
    # Any real edit moves the mtime, and the file is hashed again.
    os.utime(caption, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert _dataset_inputs(params, project)["dataset:photos"] != first
