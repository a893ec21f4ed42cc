"""Opening images the same way everywhere, and reading their size from the header alone.

`to_rgb` is the one conversion from any PIL mode to RGB (EXIF orientation applied, transparency
composited onto white), used for edit and reference images alike. `probe_header` answers "can this be
used, and how big is it once oriented?" without decoding a pixel: PIL parses only the header on
`Image.open` (JPEG and WebP headers are parsed here: PIL builds JPEG quantisation tables and reads a
whole WebP file), and truncation is caught from the file's end (JPEG end-of-image marker, PNG IEND
chunk, RIFF size of WebP, BMP file size), so a metadata scan costs a few small reads per file.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# EXIF orientations that swap width and height (rotations by 90 or 270 degrees).
_TRANSPOSED = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112
_TAIL_BYTES = 4096


class ImageReadError(ValueError):
    """An image that cannot be used: its path, the reason, and a kind for reports ("unreadable")."""

    def __init__(self, message: str, kind: str = "unreadable") -> None:
        super().__init__(message)
        self.kind = kind


def to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency onto white so edit and reference get identical backgrounds.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit greyscale: keep the top 8 bits rather than clipping everything above 255 to white.
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    if img.mode == "F":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")


def open_rgb(source: Path | bytes, name: str | None = None) -> Image.Image:
    """Fully decode a file (or encoded bytes) as RGB, or raise ImageReadError naming it."""
    label = name or str(source if not isinstance(source, bytes) else "<bytes>")
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(handle) as img:
            img.load()
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{label}: {type(exc).__name__}: {exc}") from exc


def _orientation(raw: bytes | None) -> int:
    """EXIF orientation from a raw EXIF block (1 when absent or unreadable)."""
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
    except (OSError, SyntaxError, ValueError, struct.error):
        return 1
    value = exif.get(_EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) else 1


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            f"decompression bomb: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
        )


def _truncation(fmt: str | None, head: bytes, tail: bytes, size: int) -> str | None:
    """Why a file looks cut short, judged from its first and last bytes; None when it looks whole."""
    if fmt == "JPEG":
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG":
        return None if b"IEND" in tail[-64:] else "truncated PNG (no IEND chunk)"
    if fmt == "BMP" and len(head) >= 6:
        bmp_size = struct.unpack("<I", head[2:6])[0]
        return None if bmp_size <= size else f"truncated BMP ({size} of {bmp_size} bytes)"
    return None


def _webp_orientation(handle: BinaryIO, size: int) -> int:
    """Orientation from a WebP EXIF chunk, found by hopping over chunk headers (no pixel data read)."""
    pos = 12
    while pos + 8 <= size:
        handle.seek(pos)
        fourcc, length = struct.unpack("<4sI", handle.read(8))
        if fourcc == b"EXIF":
            return _orientation(handle.read(length))
        pos += 8 + length + (length & 1)
    return 1


def _webp_size(handle: BinaryIO, head: bytes, size: int) -> tuple[int, int, int]:
    """(width, height, orientation) of a WebP from its first chunk; PIL would read the whole file."""
    riff_size = struct.unpack("<I", head[4:8])[0] + 8
    if riff_size > size:
        raise ImageReadError(f"truncated WebP ({size} of {riff_size} bytes)")
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF, 1
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = struct.unpack("<I", head[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 1
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        has_exif = bool(head[20] & 0x08)
        return width, height, _webp_orientation(handle, size) if has_exif else 1
    raise ImageReadError("not a WebP image this reader understands (unknown first chunk)")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (bit depth, colour type) pairs the PNG specification allows; PIL opens every one of them.
_PNG_DEPTHS = frozenset(
    [(d, 0) for d in (1, 2, 4, 8, 16)] + [(d, 3) for d in (1, 2, 4, 8)] + [(d, t) for d in (8, 16) for t in (2, 4, 6)]
)


def _png_size(handle: BinaryIO) -> tuple[int, int, int] | None:
    """(width, height, 1) of a plain PNG from its IHDR chunk; None for anything PIL should judge.

    PIL's PNG opener costs about three times the file read itself. Only the common layout is
    answered here: a well-formed IHDR (its CRC checked, as PIL checks it) followed directly by IDAT,
    so there is no chunk between them (an eXIf orientation, text, a colour profile) that PIL would
    read or reject.
    """
    handle.seek(0)
    start = handle.read(41)  # signature 8, IHDR 4 + 4 + 13 + CRC 4, the next chunk's length and type 8
    if len(start) < 41 or start[8:16] != b"\x00\x00\x00\x0dIHDR" or start[37:41] != b"IDAT":
        return None
    if zlib.crc32(start[12:29]) != int.from_bytes(start[29:33], "big"):
        return None
    width, height = int.from_bytes(start[16:20], "big"), int.from_bytes(start[20:24], "big")
    depth, colour, compression, filtering, interlace = start[24:29]
    if not (0 < width < 2**31 and 0 < height < 2**31) or (depth, colour) not in _PNG_DEPTHS:
        return None
    if compression or filtering or interlace > 1:
        return None
    return width, height, 1


# Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8 and CC are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(handle: BinaryIO) -> tuple[int, int, int] | None:
    """(width, height, orientation) from the JPEG segments before the frame header; None if unusual.

    PIL's JPEG header parser also builds quantisation tables (~0.3 ms a file); the size needs only
    a hop over segment lengths to the start-of-frame marker, and the Exif APP1 segment on the way.
    """
    handle.seek(2)
    orientation = 1
    while True:
        marker = handle.read(4)
        if len(marker) < 4:
            raise ImageReadError("truncated JPEG (ends inside its header)")
        if marker[0] != 0xFF:
            raise ImageReadError("corrupt JPEG header (segment without a marker)")
        code = marker[1]
        if code == 0xFF or code == 0x01 or 0xD0 <= code <= 0xD8:
            handle.seek(-2 if code != 0xFF else -3, io.SEEK_CUR)  # fill byte or a marker without length
            continue
        if code in (0xD9, 0xDA):
            raise ImageReadError("corrupt JPEG header (image data before a frame header)")
        length = int.from_bytes(marker[2:4], "big")
        if length < 2:
            raise ImageReadError("corrupt JPEG header (bad segment length)")
        if code in _JPEG_SOF:
            frame = handle.read(5)
            if len(frame) < 5:
                raise ImageReadError("truncated JPEG (ends inside its header)")
            height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
            return None if height == 0 or width == 0 else (width, height, orientation)
        if code == 0xE1 and orientation == 1:
            segment = handle.read(length - 2)
            if segment.startswith(b"Exif\x00\x00"):
                orientation = _orientation(segment)
        else:
            handle.seek(length - 2, io.SEEK_CUR)


def _probe(handle: BinaryIO, size: int, max_pixels: int | None) -> tuple[int, int]:
    if size == 0:
        raise ImageReadError("empty file (0 bytes)")
    head = handle.read(32)
    if len(head) >= 30 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        width, height, orientation = _webp_size(handle, head, size)
        _check_pixels(width, height, max_pixels)
        return (height, width) if orientation in _TRANSPOSED else (width, height)
    handle.seek(max(0, size - _TAIL_BYTES))
    tail = handle.read(_TAIL_BYTES)
    if head[:8] == _PNG_SIGNATURE:
        found, fmt = _png_size(handle), "PNG"
    elif head[:3] == b"\xff\xd8\xff":
        found, fmt = _jpeg_size(handle), "JPEG"
    else:
        found = None
    if found is not None:
        width, height, orientation = found
    else:
        width, height, orientation, fmt = _pil_header(handle)
    _check_pixels(width, height, max_pixels)
    reason = _truncation(fmt, head, tail, size)
    if reason:
        raise ImageReadError(reason)
    return (height, width) if orientation in _TRANSPOSED else (width, height)


def _pil_header(handle: BinaryIO) -> tuple[int, int, int, str | None]:
    handle.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(handle) as img:
                # The EXIF block the header already yielded; `getexif()` on a PNG would decode the pixels.
                return img.size[0], img.size[1], _orientation(img.info.get("exif")), img.format
        except Image.DecompressionBombError as exc:
            raise ImageReadError(f"decompression bomb: {exc}") from exc
        except (UnidentifiedImageError, SyntaxError, ValueError, struct.error) as exc:
            raise ImageReadError(f"not an image this reader understands ({type(exc).__name__})") from exc
        except OSError as exc:
            raise ImageReadError(f"cannot read image header: {exc}") from exc


def default_max_pixels() -> int | None:
    return Image.MAX_IMAGE_PIXELS


def probe_stream(handle: BinaryIO, size: int, max_pixels: int | None = -1) -> tuple[int, int]:
    """`probe_header` on an open binary stream of `size` bytes (e.g. a zero-copy Arrow buffer reader)."""
    return _probe(handle, size, default_max_pixels() if max_pixels == -1 else max_pixels)


def probe_header(source: Path | str | bytes, max_pixels: int | None = -1) -> tuple[int, int]:
    """(width, height) with EXIF orientation applied, from the header only; ImageReadError otherwise.

    `max_pixels` bounds width*height (default: PIL's Image.MAX_IMAGE_PIXELS; None: no bound), so a
    decompression bomb is reported instead of decoded. The reason in the error leaves out the path.
    """
    limit = default_max_pixels() if max_pixels == -1 else max_pixels
    if isinstance(source, bytes):
        return _probe(io.BytesIO(source), len(source), limit)
    try:
        with open(source, "rb") as handle:
            return _probe(handle, os.fstat(handle.fileno()).st_size, limit)
    except ImageReadError:
        raise
    except OSError as exc:
        raise ImageReadError(f"I/O error: {exc.strerror or exc}") from exc


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only, EXIF orientation applied; ImageReadError naming the path."""
    try:
        return probe_header(Path(path))
    except ImageReadError as exc:
        raise ImageReadError(f"{path}: {exc}", exc.kind) from exc
