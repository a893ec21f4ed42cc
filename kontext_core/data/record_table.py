"""The fetch stage's record table on disk, written and read one record at a time.

`records.jsonl` holds one record per line (sorted keys), each dataset's records together and in key
order; `summary.json` holds, per dataset, its record count and where its lines lie in that file
(byte offset and length), and the problems fetch found. A reader seeks to one dataset and streams
it, so neither fetch nor pair holds a 100,000-image dataset's records whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from kontext_core.data.records import Problem, Record
from kontext_core.fsutil import pending_file, write_json

RECORDS_NAME = "records.jsonl"
SUMMARY_NAME = "summary.json"


class RecordSource(Protocol):
    """Records by dataset id, as pairing reads them."""

    def count(self, dataset_id: str) -> int: ...

    def iter(self, dataset_id: str) -> Iterator[Record]: ...


class RecordLists:
    """A `RecordSource` over records already in memory (tests, small callers)."""

    def __init__(self, records: Mapping[str, list[Record]]) -> None:
        self.records = records

    def count(self, dataset_id: str) -> int:
        return len(self.records.get(dataset_id, []))

    def iter(self, dataset_id: str) -> Iterator[Record]:
        return iter(self.records.get(dataset_id, []))


def write_record_table(
    folder: Path, streams: Iterable[tuple[str, Iterable[Record | Problem]]]
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Write `records.jsonl` and `summary.json` under `folder` from (dataset id, backend stream)
    pairs, taken in order; returns each dataset's record count and the problems (as dicts)."""
    index: dict[str, dict[str, int]] = {}
    problems: list[dict[str, Any]] = []
    with pending_file(Path(folder) / RECORDS_NAME) as out:
        for dataset_id, stream in streams:
            start, count = out.tell(), 0
            for item in stream:
                if isinstance(item, Problem):
                    problems.append(item.to_dict())
                    continue
                out.write(json.dumps(item.to_dict(), sort_keys=True).encode() + b"\n")
                count += 1
            index[dataset_id] = {"records": count, "offset": start, "bytes": out.tell() - start}
    write_json(Path(folder) / SUMMARY_NAME, {"datasets": index, "problems": problems})
    return {key: value["records"] for key, value in index.items()}, problems


class RecordTable:
    """A `RecordSource` over the files `write_record_table` wrote: each dataset is read from disk
    when it is iterated (and again each time), never kept."""

    def __init__(self, records_file: Path, summary_file: Path) -> None:
        self.records_file = Path(records_file)
        summary = json.loads(Path(summary_file).read_text())
        self.index: dict[str, dict[str, int]] = summary["datasets"]
        self.problems = [Problem(**p) for p in summary["problems"]]

    def count(self, dataset_id: str) -> int:
        return self.index[dataset_id]["records"] if dataset_id in self.index else 0

    def iter(self, dataset_id: str) -> Iterator[Record]:
        if dataset_id not in self.index:
            return
        where = self.index[dataset_id]
        left = where["bytes"]
        with open(self.records_file, "rb") as fh:
            fh.seek(where["offset"])
            while left > 0:
                line = fh.readline()
                if not line.endswith(b"\n") or len(line) > left:
                    raise ValueError(f"{self.records_file}: dataset '{dataset_id}' is cut short; run fetch again")
                left -= len(line)
                yield Record(**json.loads(line))

    def lists(self) -> dict[str, list[Record]]:
        """Every dataset's records in memory (for small tables and tests)."""
        return {dataset_id: list(self.iter(dataset_id)) for dataset_id in self.index}
