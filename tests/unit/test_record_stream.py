"""fetch and pair stream records: the record table on disk, block-wise header scans, the digest memo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from kontext_core import fsutil
from kontext_core.config import DatasetConfig, DatasetEntry, params_from_dict
from kontext_core.data import local, scan
from kontext_core.data.images import default_max_pixels
from kontext_core.data.local import iter_local_records
from kontext_core.data.pairing import build_pairs, iter_pairs, sampled_keys
from kontext_core.data.record_table import RecordTable, write_record_table
from kontext_core.data.records import Problem, Record, split_records
from kontext_core.data.report import PairReport
from kontext_core.data.scan import HeaderScan, folder_digest, load_scan_cache, scan_headers


def _images(folder: Path, count: int, size=(24, 16)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index:03d}.png"
        Image.new("RGB", size, (index, 0, 0)).save(path)
        paths.append(str(path))
    return paths


def _records(dataset_id: str, count: int) -> list[Record]:
    return [
        Record(dataset_id, f"{i:03d}.png", f"{dataset_id}/{i:03d}.png", f"cap {i}", "local", 64, 48)
        for i in range(count)
    ]


def test_record_table_reads_back_each_dataset_alone_and_in_order(tmp_path):
    streams = [
        ("edit", [*_records("edit", 3), Problem("edit", "edit/bad.png", "empty file (0 bytes)")]),
        ("empty", []),
        ("ref", [Problem("ref", "ref/x.png", "truncated"), *_records("ref", 2)]),
    ]
    counts, problems = write_record_table(tmp_path, streams)
    assert counts == {"edit": 3, "empty": 0, "ref": 2}
    assert [p["path"] for p in problems] == ["edit/bad.png", "ref/x.png"]

    table = RecordTable(tmp_path / "records.jsonl", tmp_path / "summary.json")
    assert list(table.iter("ref")) == _records("ref", 2)
    assert list(table.iter("edit")) == _records("edit", 3)  # any order of reading, any number of times
    assert list(table.iter("edit")) == _records("edit", 3)
    assert list(table.iter("empty")) == [] and list(table.iter("unknown")) == []
    assert (table.count("edit"), table.count("unknown")) == (3, 0)
    assert [p.path for p in table.problems] == ["edit/bad.png", "ref/x.png"]
    # One record per line, sorted keys: a file `wc -l`, grep and DVC diffs read.
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0]) == _records("edit", 3)[0].to_dict()
    assert lines[0] == json.dumps(json.loads(lines[0]), sort_keys=True)


def test_record_table_cut_short_is_an_error_naming_the_file(tmp_path):
    write_record_table(tmp_path, [("edit", _records("edit", 3))])
    records = tmp_path / "records.jsonl"
    records.write_bytes(records.read_bytes()[:-30])
    with pytest.raises(ValueError, match=r"records\.jsonl: dataset 'edit' is cut short"):
        list(RecordTable(records, tmp_path / "summary.json").iter("edit"))


def test_a_failed_fetch_stream_leaves_no_record_file(tmp_path):
    def failing():
        yield from _records("edit", 2)
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        write_record_table(tmp_path, [("edit", failing())])
    assert list(tmp_path.iterdir()) == []  # no records.jsonl, no temp file, no summary


def test_local_records_are_handed_on_before_later_blocks_are_read(tmp_path, monkeypatch):
    root = tmp_path / "img"
    paths = _images(root, 5)
    monkeypatch.setattr(local, "SCAN_BLOCK", 2)
    entry = DatasetEntry.model_validate({"id": "d", "instance_data_dir": str(root), "caption_strategy": None})
    stream = iter_local_records(entry, tmp_path)
    first = next(stream)
    assert isinstance(first, Record) and first.key == "000.png"
    # 003.png is in a later block: damaged now, after the first record left, it is read as damaged.
    Path(paths[3]).write_bytes(b"")
    records, problems = split_records(stream)
    assert [r.key for r in records] == ["001.png", "002.png", "004.png"]
    assert [(Path(p.path).name, p.reason) for p in problems] == [("003.png", "empty file (0 bytes)")]


def test_block_scan_equals_one_scan_and_keeps_an_unchanged_cache_file(tmp_path):
    paths = _images(tmp_path / "img", 7)
    cache = tmp_path / "scan.json"
    whole = scan_headers(paths, cache)
    assert whole.scanned == 7
    inode = cache.stat().st_ino
    with HeaderScan(cache, total=len(paths)) as blocks:
        answers = blocks.scan(paths[:3]) + blocks.scan(paths[3:])
    assert answers == [whole.headers[p] for p in paths]
    assert (blocks.cached, blocks.scanned) == (7, 0)
    assert cache.stat().st_ino == inode  # every answer from the cache: the file is not rewritten

    # A scan that fails part-way leaves the old cache as it was.
    before = cache.read_bytes()
    with pytest.raises(RuntimeError), HeaderScan(cache, total=len(paths)) as failing:
        failing.scan(paths[:2])
        raise RuntimeError("stopped")
    assert cache.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert set(load_scan_cache(cache, default_max_pixels())) == set(paths)


def test_digest_memo_is_merged_with_the_listing_and_rewritten_only_on_change(tmp_path, monkeypatch):
    root = tmp_path / "img"
    paths = _images(root, 4)
    memo = tmp_path / "memo.json"
    first = folder_digest(root, memo)
    assert first == folder_digest(root)  # the memo never changes the digest
    inode = memo.stat().st_ino

    hashed: list[str] = []
    real_hash = fsutil.sha256_file

    def counted(path, *args, **kwargs):
        hashed.append(Path(path).name)
        return real_hash(path, *args, **kwargs)

    monkeypatch.setattr(fsutil, "sha256_file", counted)
    assert folder_digest(root, memo) == first
    assert hashed == [] and memo.stat().st_ino == inode  # all answered by the memo, file untouched

    Image.new("RGB", (5, 5)).save(paths[1])
    os.utime(paths[1], ns=(1, 1))
    Path(paths[3]).unlink()
    Image.new("RGB", (6, 6)).save(root / "zz.png")
    changed = folder_digest(root, memo)
    assert hashed == ["001.png", "zz.png"] and changed != first
    assert changed == folder_digest(root)
    remembered = [json.loads(line)[0] for line in memo.read_text().splitlines()[1:]]
    assert remembered == ["000.png", "001.png", "002.png", "zz.png"]
    # The memo holds no hash for this process: a 100,000-image folder leaves nothing behind in it.
    assert not [key for key in fsutil._FILE_HASHES if key[0].startswith(str(root.resolve()))]
    assert scan.MEMO_VERSION == json.loads(memo.read_text().splitlines()[0])["version"]


def test_pairs_from_the_table_on_disk_equal_pairs_from_lists(tmp_path):
    config = DatasetConfig(
        entries=[
            DatasetEntry.model_validate(
                {"id": "edit", "type": "local", "instance_data_dir": "x", "conditioning_data": ["ref"],
                 "resolution": 64, "resolution_type": "pixel_area", "max_num_samples": 7}
            ),
            DatasetEntry.model_validate(
                {"id": "ref", "type": "local", "instance_data_dir": "y", "conditioning_type": "reference_strict"}
            ),
        ]
    )
    lists = {"edit": _records("edit", 10), "ref": _records("ref", 9)}
    problems = [Problem("ref", "ref/gone.png", "truncated")]
    write_record_table(tmp_path, [("edit", lists["edit"]), ("ref", [*problems, *lists["ref"]])])
    table = RecordTable(tmp_path / "records.jsonl", tmp_path / "summary.json")
    params = params_from_dict({})
    expected, expected_report = build_pairs(params, config, lists, problems)
    report = PairReport()
    assert list(iter_pairs(params, config, table, table.problems, report)) == expected
    assert report.to_dict() == expected_report.to_dict()
    kept = sampled_keys(config.by_id()["edit"], table)
    assert len(kept) == 7 and len(expected) == len(kept & {r.key for r in lists["ref"]})
