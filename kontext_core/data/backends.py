"""Dataset backends: turn a dataset entry into records (image reference, caption, key, header size).

`local` (kontext_core.data.local) walks `instance_data_dir`; `huggingface`
(kontext_core.data.huggingface) reads rows of `dataset_name` and splits composite panels lazily. A
record's `key` is what pairing matches across datasets: the posix relative path for folders, the
zero-padded row index for Hugging Face datasets. Unreadable inputs become `Problem`s, never records.
"""

from __future__ import annotations

from pathlib import Path

from kontext_core.config import DatasetEntry
from kontext_core.data.huggingface import huggingface_records
from kontext_core.data.local import local_records, resolve
from kontext_core.data.records import Problem, Record

__all__ = ["Problem", "Record", "entry_records", "huggingface_records", "local_records", "resolve"]


def entry_records(
    entry: DatasetEntry, base_dir: Path, scan_cache_dir: Path | None = None
) -> tuple[list[Record], list[Problem]]:
    """Records of one enabled image/conditioning entry; local header scans cached under `scan_cache_dir`."""
    if entry.type == "local":
        cache = scan_cache_dir / f"{entry.id}.json" if scan_cache_dir is not None else None
        return local_records(entry, base_dir, cache)
    return huggingface_records(entry, base_dir)
