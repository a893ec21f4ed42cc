"""Opening images the same way everywhere: EXIF orientation applied, any mode converted to RGB."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ImageReadError(ValueError):
    """An image that cannot be used, with its path and the reason."""


def to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency onto white so edit and reference get identical backgrounds.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")


def open_rgb(path: Path) -> Image.Image:
    """Fully decode `path` as RGB or raise ImageReadError naming the path."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: {type(exc).__name__}: {exc}") from exc


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only, EXIF orientation applied."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: {type(exc).__name__}: {exc}") from exc
    if orientation in (5, 6, 7, 8):
        return height, width
    return width, height
