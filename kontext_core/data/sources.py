"""Open an image named in a table (records, pair table) as RGB pixels, wherever it lives.

Tables hold image references as strings: a project-relative or absolute file path, or a backend's
prefixed reference (`hf:` rows of a `datasets` dataset, ...). Stages decode pixels only through
`open_ref`, key caches with `ref_digest` and read sizes with `ref_size`; each call goes to the
backend that wrote the reference (kontext_core.data.backends).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from kontext_core.data.backends import backend_for_ref


def open_ref(ref: str, workdir: Path) -> Image.Image:
    """Decode the image `ref` as RGB, or raise ImageReadError naming it."""
    return backend_for_ref(ref).open_ref(ref, Path(workdir))


def ref_digest(ref: str, workdir: Path) -> str:
    """A content hash of the image behind `ref` (cache keys use it, never the path)."""
    return backend_for_ref(ref).ref_digest(ref, Path(workdir))


def ref_size(ref: str, workdir: Path) -> tuple[int, int]:
    """(width, height), EXIF orientation applied, from the header only; ImageReadError if unreadable."""
    return backend_for_ref(ref).ref_size(ref, Path(workdir))
