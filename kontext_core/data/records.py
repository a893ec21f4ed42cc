"""What the fetch stage hands to the rest of the pipeline: records, and problems found on the way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

# Problem kinds the pre-flight report groups by.
UNREADABLE = "unreadable"  # zero-byte, truncated, not an image, decompression bomb, I/O error
OUTSIDE_ROOT = "outside_root"  # an image or caption (symlink, parquet `path` cell) that leaves its dataset root
BAD_CAPTION = "bad_caption"  # caption file not UTF-8 or unreadable
MISSING_CAPTION = "missing_caption"  # caption file or caption column value missing
COMPOSITE = "composite"  # composite narrower than image_count pixels (no panel left)


@dataclass
class Record:
    dataset_id: str
    key: str
    # An image reference (see kontext_core.data.sources): a file path, or an `hf:` row reference.
    image: str
    caption: str | None
    source: str
    # Oriented size from the image header (for a composite: the panel's size).
    width: int | None = None
    height: int | None = None
    # The image's content digest, taken once by fetch (a local file's SHA-256 from the fingerprint's
    # hashing pass, an S3 object's ETag and size, a row's image cell): what cache keys use, so no later
    # stage reads an image to key it. None: the stage asks the backend (`sources.ref_digest`).
    digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Problem:
    dataset_id: str
    path: str
    reason: str
    kind: str = UNREADABLE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_records(items: Iterable[Record | Problem]) -> tuple[list[Record], list[Problem]]:
    """A backend's stream of records and problems as two lists, each in stream order."""
    records: list[Record] = []
    problems: list[Problem] = []
    for item in items:
        if isinstance(item, Record):
            records.append(item)
        else:
            problems.append(item)
    return records, problems
