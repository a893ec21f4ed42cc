"""Open an image named in a table (records, pair table) as RGB pixels, wherever it lives.

Tables hold image references as strings: a project-relative or absolute file path, or an `hf:` row
reference (kontext_core.data.huggingface) for a row (or composite panel) of a `datasets` dataset.
Stages decode pixels only through `open_ref`, key caches with `ref_digest` and read sizes with
`ref_size`, so every stage follows whatever scheme a backend adds here.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from kontext_core.data.huggingface import hf_ref_digest, hf_ref_size, is_hf_ref, open_hf_ref
from kontext_core.data.images import image_size, open_rgb


def resolve_ref(ref: str, workdir: Path) -> Path:
    """The file behind a path reference (not defined for `hf:` references)."""
    if is_hf_ref(ref):
        raise ValueError(f"{ref} is a dataset row, not a file; use open_ref / ref_digest / ref_size")
    path = Path(ref)
    return path if path.is_absolute() else Path(workdir) / path


def open_ref(ref: str, workdir: Path) -> Image.Image:
    """Decode the image `ref` as RGB, or raise ImageReadError naming it."""
    if is_hf_ref(ref):
        return open_hf_ref(ref, workdir)
    return open_rgb(resolve_ref(ref, workdir))


def ref_digest(ref: str, workdir: Path) -> str:
    """A content hash of the image behind `ref` (cache keys use it, never the path)."""
    from kontext_core.fsutil import sha256_file

    if is_hf_ref(ref):
        return hf_ref_digest(ref, workdir)
    return sha256_file(resolve_ref(ref, workdir))


def ref_size(ref: str, workdir: Path) -> tuple[int, int]:
    """(width, height), EXIF orientation applied, from the header only; ImageReadError if unreadable."""
    if is_hf_ref(ref):
        return hf_ref_size(ref, workdir)
    return image_size(resolve_ref(ref, workdir))
