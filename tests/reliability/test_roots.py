"""A dataset's root is a boundary: captions, images and parquet `path` cells that resolve outside it are
`outside_root` problems and are never opened (an audit hook records every file the process opens)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kontext_core.config import DatasetEntry
from kontext_core.data.huggingface import huggingface_records
from kontext_core.data.local import local_records
from kontext_core.data.sources import open_ref

pytestmark = pytest.mark.reliability

_opened: list[str] = []
_watching: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _watching and isinstance(args[0], str | Path):
        path = str(args[0])
        if any(path.startswith(root) for root in _watching):
            _opened.append(path)


sys.addaudithook(_audit)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside every dataset root, holding what must never be read; opens of it are recorded."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("SECRET-PASSWORD-LINE")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(folder / "private.png")
    _opened.clear()
    _watching.append(str(folder))
    yield folder
    _watching.remove(str(folder))


def _png(color=(200, 10, 10), size=32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def test_a_caption_linked_outside_the_root_is_refused_unread(tmp_path, outside):
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.png").write_bytes(_png())
    (root / "a.txt").symlink_to(outside / "secret.txt")
    (root / "b.png").write_bytes(_png((0, 200, 0)))
    (root / "b.txt").write_text("a fine caption")
    (root / "c.png").symlink_to(outside / "private.png")
    entry = DatasetEntry(id="d", type="local", instance_data_dir=str(root), caption_strategy="textfile")

    records, problems = local_records(entry, tmp_path)

    assert {r.key: r.caption for r in records} == {"a.png": None, "b.png": "a fine caption"}
    assert {(Path(p.path).name, p.kind) for p in problems} == {("a.png", "outside_root"), ("c.png", "outside_root")}
    assert _opened == []
    assert "SECRET" not in repr(records) + repr(problems)


def test_parquet_path_cells_outside_the_dataset_folder_are_refused_unread(tmp_path, outside):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "inside.png").write_bytes(_png((0, 0, 200)))
    rows = {
        "image": [
            {"bytes": _png(), "path": None},
            {"bytes": None, "path": str(outside / "private.png")},  # absolute, elsewhere on the machine
            {"bytes": None, "path": "../outside/private.png"},  # relative, climbing out
            {"bytes": None, "path": "inside.png"},  # relative, inside the dataset folder: fine
        ],
        "caption": ["bytes row", "absolute path row", "climbing row", "inside row"],
    }
    # Written with pyarrow: `datasets` would embed the files the paths name while writing.
    pq.write_table(pa.table(rows), folder / "rows.parquet")
    entry = DatasetEntry.model_validate(
        {
            "id": "hf",
            "type": "huggingface",
            "dataset_name": "ds/rows.parquet",
            "caption_strategy": "huggingface",
            "huggingface": {"caption_column": "caption", "image_column": "image"},
        }
    )

    records, problems = huggingface_records(entry, tmp_path)

    assert [r.key for r in records] == ["00000000", "00000003"]
    assert {(p.path, p.kind) for p in problems} == {
        ("ds/rows.parquet[1]", "outside_root"),
        ("ds/rows.parquet[2]", "outside_root"),
    }
    assert open_ref(records[1].image, tmp_path).getpixel((0, 0)) == (0, 0, 200)
    assert _opened == []
