"""Counting every image hash `kontext_core.fsutil` takes, in this process or a child one (which imports
this module through PYTHONPATH): the real functions still run; each call is appended to a list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kontext_core import fsutil

# What a hashed image cell (bytes in memory, not a file) is recorded as.
BYTES = "<image cell bytes>"


def count_hashes(hashed: list[str], set_attr: Callable[[Any, str, Any], None] = setattr) -> list[str]:
    """Wrap `fsutil.read_sha256` (a file: its path) and `fsutil.sha256_image_bytes` (a cell: BYTES) so
    each call lands in `hashed`; `set_attr` is pytest's `monkeypatch.setattr` in a test."""
    read, cell = fsutil.read_sha256, fsutil.sha256_image_bytes

    def counted_read(path: Any, *args: Any, **kwargs: Any) -> Any:
        hashed.append(str(path))
        return read(path, *args, **kwargs)

    def counted_cell(data: bytes) -> str:
        hashed.append(BYTES)
        return cell(data)

    set_attr(fsutil, "read_sha256", counted_read)
    set_attr(fsutil, "sha256_image_bytes", counted_cell)
    return hashed
