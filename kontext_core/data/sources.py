"""Open an image named in a table (records, pair table) as RGB pixels, wherever it lives.

Tables hold image references as strings: a project-relative or absolute file path. Stages
decode pixels only through `open_ref`, so a backend that keeps images elsewhere (rows of a
Hugging Face dataset, panels of a composite) adds its scheme here and every stage follows.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from kontext_core.data.images import open_rgb


def resolve_ref(ref: str, workdir: Path) -> Path:
    path = Path(ref)
    return path if path.is_absolute() else Path(workdir) / path


def open_ref(ref: str, workdir: Path) -> Image.Image:
    """Decode the image `ref` as RGB, or raise ImageReadError naming it."""
    return open_rgb(resolve_ref(ref, workdir))


def ref_digest(ref: str, workdir: Path) -> str:
    """A content hash of the image behind `ref` (cache keys use it, never the path)."""
    from kontext_core.fsutil import sha256_file

    return sha256_file(resolve_ref(ref, workdir))


def ref_size(ref: str, workdir: Path) -> tuple[int, int]:
    """(width, height), EXIF orientation applied, from the header only; ImageReadError if unreadable."""
    from kontext_core.data.images import image_size

    return image_size(resolve_ref(ref, workdir))
