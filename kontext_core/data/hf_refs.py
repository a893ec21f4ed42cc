"""Reading one `hf:` reference (a row, or a panel of a composite row) for the stages: its pixels,
its content digest and its header size. The rows are opened once per process (kontext_core.data.huggingface)."""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import Image

from kontext_core.data.huggingface import HfRef, panel_digest, row_image
from kontext_core.data.images import ImageReadError, open_rgb, probe_header
from kontext_core.data.records import COMPOSITE


def _panel_box(width: int, height: int, panel: int, panels: int) -> tuple[int, int, int, int]:
    panel_w = width // panels
    return panel_w * panel, 0, panel_w * (panel + 1), height


def open_hf_ref(ref: str, workdir: Path, digest: str | None = None) -> Image.Image:
    """The row's image (its panel); with `digest`, refused unless the bytes decoded have it."""
    from kontext_core.data.backend import changed_since_recorded
    from kontext_core.fsutil import sha256_image_bytes

    parsed = HfRef.parse(ref)
    data = row_image(parsed, workdir)
    if digest is not None:
        if isinstance(data, Path):
            data = data.read_bytes()
        if panel_digest(sha256_image_bytes(data), parsed.panel, parsed.panels) != digest:
            raise ImageReadError(changed_since_recorded(ref))
    img = open_rgb(data, name=ref)
    if parsed.panels > 1:
        if img.width < parsed.panels:
            raise ImageReadError(f"{ref}: composite width {img.width} is narrower than {parsed.panels}", COMPOSITE)
        img = img.crop(_panel_box(img.width, img.height, parsed.panel, parsed.panels))
    return img


def hf_ref_digest(ref: str, workdir: Path) -> str:
    """Hash of the row's encoded image and the panel: content-based, so equal across processes and copies."""
    return _digest_cached(ref, str(Path(workdir).resolve()))


# A stage asks for the same row's digest once per use (target, then reference of another pair...);
# the dataset is immutable while a stage runs, so remember the answer for the process.
@functools.lru_cache(maxsize=1 << 16)
def _digest_cached(ref: str, workdir: str) -> str:
    from kontext_core.fsutil import sha256_file, sha256_image_bytes

    parsed = HfRef.parse(ref)
    data = row_image(parsed, Path(workdir))
    content = sha256_file(data) if isinstance(data, Path) else sha256_image_bytes(data)
    return panel_digest(content, parsed.panel, parsed.panels)


def hf_ref_size(ref: str, workdir: Path) -> tuple[int, int]:
    parsed = HfRef.parse(ref)
    try:
        width, height = probe_header(row_image(parsed, workdir))
    except ImageReadError as exc:
        raise ImageReadError(f"{ref}: {exc}", exc.kind) from exc
    return width // parsed.panels, height
