"""The header probe reads a plain PNG's size from its IHDR chunk itself, and leaves every other PNG
to PIL: for each kind of PNG below, the probe's answer is PIL's (or PIL's error)."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from kontext_core.data.images import ImageReadError, _png_size, probe_header


def _png(mode: str, size=(7, 5), **save) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format="PNG", **save)
    return out.getvalue()


def _with_exif_orientation(data: bytes, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).save(out, format="PNG", exif=exif.tobytes())
    return out.getvalue()


def _pil_answer(data: bytes):
    try:
        with Image.open(io.BytesIO(data)) as img:
            transposed = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            return (img.size[1], img.size[0]) if transposed else img.size
    except Exception as exc:  # noqa: BLE001 - any PIL failure: the probe must fail too
        return type(exc)


def _text_chunk() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("caption", "a red circle")
    return info


# (name, bytes, whether the IHDR path answers it)
CASES = [
    *[(f"mode {mode}", _png(mode), True) for mode in ("1", "L", "LA", "RGB", "RGBA", "I;16")],
    ("palette (PLTE before IDAT)", _png("P"), False),
    ("wide", _png("RGB", (300, 2)), True),
    ("text chunk before IDAT", _png("RGB", pnginfo=_text_chunk()), False),
    ("exif rotated", _with_exif_orientation(_png("RGB", (9, 4)), 6), False),
    ("icc profile", _png("RGB", icc_profile=b"\0" * 128), False),
]


@pytest.mark.parametrize("name, data, fast", CASES, ids=[c[0] for c in CASES])
def test_png_probe_answers_what_pil_answers(name, data, fast):
    assert (_png_size(io.BytesIO(data)) is not None) == fast
    assert probe_header(data) == _pil_answer(data)


def _broken_ihdr_crc(data: bytes) -> bytes:
    return data[:29] + struct.pack(">I", zlib.crc32(data[12:29]) ^ 1) + data[33:]


def _ihdr(data: bytes, depth: int, colour: int) -> bytes:
    body = data[16:24] + bytes([depth, colour]) + data[26:29]
    chunk = b"IHDR" + body
    return data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


@pytest.mark.parametrize(
    "damage",
    [
        _broken_ihdr_crc,
        lambda d: _ihdr(d, 8, 5),
        lambda d: _ihdr(d, 3, 2),
        lambda d: d[:8] + b"\0\0\0\x0cIHDR" + d[16:],
    ],
    ids=["ihdr crc", "colour type 5", "depth 3 rgb", "short ihdr"],
)
def test_a_damaged_ihdr_goes_to_pil_and_is_reported(damage):
    data = damage(_png("RGB"))
    assert _png_size(io.BytesIO(data)) is None
    with pytest.raises(ImageReadError):
        probe_header(data)


def test_the_probe_takes_a_str_path(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(_png("RGB", (11, 3)))
    assert probe_header(str(path)) == probe_header(path) == (11, 3)
