"""Open an image named in a table (records, pair table) as RGB pixels, wherever it lives.

Tables hold image references as strings: a project-relative or absolute file path, or a backend's
prefixed reference (`hf:` rows of a `datasets` dataset, ...). Stages decode pixels only through
`open_ref` (`open_verified` where the pixels are stored under a key made from a recorded digest), key
caches with `ref_digest` (the digest fetch recorded, where the table carries it) and read sizes with
`ref_size`; each call goes to the backend that wrote the reference (kontext_core.data.backends).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from kontext_core.data.backends import backend_for_ref


def open_ref(ref: str, workdir: Path) -> Image.Image:
    """Decode the image `ref` as RGB, or raise ImageReadError naming it."""
    return backend_for_ref(ref).open_ref(ref, Path(workdir))


def ref_digest(ref: str, workdir: Path, recorded: str | None = None) -> str:
    """A content hash of the image behind `ref` (cache keys use it, never the path): the digest a
    table `recorded` for it (fetch took it once), else the backend's answer now."""
    return recorded or backend_for_ref(ref).ref_digest(ref, Path(workdir))


def open_verified(ref: str, workdir: Path, digest: str | None) -> Image.Image:
    """`open_ref` for pixels to be stored under a key made from `digest`: an image that no longer has
    the digest a table recorded is refused (ImageReadError), never stored under the old key."""
    if digest is None:
        return open_ref(ref, workdir)
    return backend_for_ref(ref).open_verified(ref, Path(workdir), digest)


def ref_size(ref: str, workdir: Path) -> tuple[int, int]:
    """(width, height), EXIF orientation applied, from the header only; ImageReadError if unreadable."""
    return backend_for_ref(ref).ref_size(ref, Path(workdir))
