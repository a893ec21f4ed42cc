"""The local backend: recursive discovery, captions, orientation, colour modes and bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontext_core.config import DatasetEntry
from kontext_core.data.local import local_records
from kontext_core.data.sources import open_ref, ref_size


def _entry(root: Path, **kw) -> DatasetEntry:
    return DatasetEntry.model_validate({"id": "d", "instance_data_dir": str(root), **kw})


def _save(path: Path, size=(40, 24), colour=(200, 30, 30), fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt, **kw)
    return path


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb to anyone who decodes it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_recursive_discovery_keys_sizes_and_exif_orientation(tmp_path):
    root = tmp_path / "data"
    _save(root / "a.png")
    _save(root / "sub" / "deeper" / "b.JPG", fmt="JPEG")
    _save(root / "sub" / "c.WebP", fmt="WEBP")
    _save(root / "d.bmp")
    _save(root / "ünï cödé name with spaces.jpeg", fmt="JPEG")
    (root / "notes.txt").write_text("not an image, not listed")
    _save(root / "skip.gif", fmt="GIF")  # not a training format
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the stored 40x24 is shown 24x40
    _save(root / "rotated.jpg", fmt="JPEG", exif=exif.tobytes())

    records, problems = local_records(_entry(root, caption_strategy=None), tmp_path)

    assert problems == []
    by_key = {r.key: r for r in records}
    assert list(by_key) == sorted(by_key)
    assert set(by_key) == {
        "a.png",
        "d.bmp",
        "rotated.jpg",
        "sub/c.WebP",
        "sub/deeper/b.JPG",
        "ünï cödé name with spaces.jpeg",
    }
    assert (by_key["a.png"].width, by_key["a.png"].height) == (40, 24)
    assert (by_key["rotated.jpg"].width, by_key["rotated.jpg"].height) == (24, 40)
    assert open_ref(by_key["rotated.jpg"].image, tmp_path).size == (24, 40)  # pixels follow the header size
    assert open_ref(by_key["ünï cödé name with spaces.jpeg"].image, tmp_path).size == (40, 24)


def test_every_mode_becomes_the_same_rgb(tmp_path):
    """Transparency composites onto white, 16-bit keeps its top byte, CMYK and palettes convert."""
    files = {}
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))
    rgba.save(files.setdefault("RGBA", tmp_path / "rgba.png"))
    Image.new("LA", (8, 8), (100, 0)).save(files.setdefault("LA", tmp_path / "la.png"))
    Image.new("L", (8, 8), 100).save(files.setdefault("L", tmp_path / "l.png"))
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(files.setdefault("P", tmp_path / "p.png"), transparency=0)
    Image.new("I;16", (8, 8), 0xC800).save(files.setdefault("I;16", tmp_path / "i16.png"))
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(files.setdefault("CMYK", tmp_path / "cmyk.jpg"), quality=100)

    pixels = {}
    for mode, path in files.items():
        with Image.open(path) as raw:
            assert raw.mode == mode  # the fixture really holds that mode
        img = open_ref(str(path), tmp_path)
        assert img.mode == "RGB" and img.size == (8, 8)
        pixels[mode] = np.asarray(img).astype(int)
    assert pixels["RGBA"][0, 0].tolist() == [255, 255, 255] and pixels["RGBA"][1, 1].tolist() == [255, 0, 0]
    assert pixels["LA"][0, 0].tolist() == [255, 255, 255]  # fully transparent grey -> white
    assert pixels["L"][0, 0].tolist() == [100, 100, 100]
    assert pixels["P"][0, 0].tolist() == [255, 255, 255] and pixels["P"][1, 1].tolist() == [10, 200, 30]
    assert pixels["I;16"][0, 0].tolist() == [0xC8] * 3
    red = pixels["CMYK"][4, 4]
    assert red[0] > 200 and red[1] < 40 and red[2] < 40


def test_caption_strategies(tmp_path):
    root = tmp_path / "data"
    _save(root / "a_red_car.png")
    (root / "a_red_car.txt").write_text("  make the car blue \n", encoding="utf-8")
    strategies = {
        "textfile": "make the car blue",
        "filename": "a red car",
        "instanceprompt": "a photo of sks",
        None: None,
    }
    for strategy, expected in strategies.items():
        entry = _entry(root, caption_strategy=strategy, instance_prompt="a photo of sks")
        records, problems = local_records(entry, tmp_path)
        assert problems == [] and [r.caption for r in records] == [expected], strategy


def test_bad_inputs_are_reported_and_the_rest_kept(tmp_path):
    root = tmp_path / "data"
    good = _save(root / "good one.png")
    (root / "good one.txt").write_text("fine")
    (root / "empty.png").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "text.png").write_text("this is not a picture")
    (root / "bomb.png").write_bytes(_png_header_only(30_000, 30_000))
    outside = _save(tmp_path / "elsewhere" / "secret.png")
    (root / "link.png").symlink_to(outside)
    (root / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    (root / "inside_link.png").symlink_to(good)  # a link that stays inside the folder is fine
    (root / "inside_link.txt").write_text("linked")
    _save(root / "latin1.png")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    _save(root / "no caption.png")

    records, problems = local_records(_entry(root, caption_strategy="textfile"), tmp_path)

    by_name = {Path(p.path).name: p for p in problems}
    assert {name: p.kind for name, p in by_name.items()} == {
        "empty.png": "unreadable",
        "truncated.jpg": "unreadable",
        "text.png": "unreadable",
        "bomb.png": "unreadable",
        "link.png": "outside_root",
        "linked_dir": "outside_root",
        "latin1.png": "bad_caption",
        "no caption.png": "missing_caption",
    }
    assert "empty" in by_name["empty.png"].reason
    assert "truncated JPEG" in by_name["truncated.jpg"].reason
    assert "decompression bomb" in by_name["bomb.png"].reason and "900000000" in by_name["bomb.png"].reason
    assert "not UTF-8" in by_name["latin1.png"].reason and "latin1.txt" in by_name["latin1.png"].reason
    # Unreadable and outside files are not records; caption problems keep the record, caption None.
    captions = {r.key: r.caption for r in records}
    assert captions == {"good one.png": "fine", "inside_link.png": "linked", "latin1.png": None, "no caption.png": None}
    assert ref_size(records[0].image, tmp_path) == (40, 24)


def test_header_scan_never_decodes_pixels(tmp_path, decoded_images):
    root = tmp_path / "data"
    for index in range(5):
        _save(root / f"{index}.png")
        _save(root / f"{index}.jpg", fmt="JPEG")
        _save(root / f"{index}.webp", fmt="WEBP")
    decoded_images.clear()  # writing the files decoded; only the scan counts
    records, problems = local_records(_entry(root, caption_strategy=None), tmp_path, workers=1)
    assert len(records) == 15 and problems == []
    assert decoded_images == []
    open_ref(records[0].image, tmp_path)
    assert decoded_images  # the spy does see a real decode


@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("WEBP", ".webp"), ("BMP", ".bmp")])
def test_truncated_files_of_each_format_are_caught_from_the_tail(tmp_path, fmt, ext):
    root = tmp_path / "data"
    whole = _save(root / f"whole{ext}", size=(48, 48), fmt=fmt)
    data = whole.read_bytes()
    (root / f"cut{ext}").write_bytes(data[: len(data) * 2 // 3])
    records, problems = local_records(_entry(root, caption_strategy=None), tmp_path)
    assert [r.key for r in records] == [f"whole{ext}"]
    assert [(Path(p.path).name, p.kind) for p in problems] == [(f"cut{ext}", "unreadable")]
    assert "truncated" in problems[0].reason


def test_jpeg_header_parser_agrees_with_pil(tmp_path):
    """Our segment walk must give PIL's (oriented) size on every kind of JPEG a user may have."""
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 255, (27, 45, 3), dtype=np.uint8))
    variants = {
        "baseline": dict(),
        "progressive": dict(progressive=True),
        "optimized": dict(optimize=True, quality=30),
        "subsampled": dict(subsampling=2),
        "icc": dict(icc_profile=b"\0" * 3000),
        "rotated": dict(exif=_exif(6)),
        "mirrored": dict(exif=_exif(2)),
        "transverse": dict(exif=_exif(7), progressive=True),
    }
    for name, kw in variants.items():
        path = tmp_path / f"{name}.jpg"
        picture.save(path, format="JPEG", **kw)
        expected = open_ref(str(path), tmp_path).size  # a full decode with EXIF applied
        assert ref_size(str(path), tmp_path) == expected, name
    for mode in ("L", "CMYK"):
        path = tmp_path / f"{mode}.jpg"
        picture.convert(mode).save(path, format="JPEG")
        assert ref_size(str(path), tmp_path) == (45, 27), mode


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()
