"""The metadata scan: (path, size, mtime) cache, pool results equal serial ones, and bench/scan.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from kontext_core.data.images import default_max_pixels
from kontext_core.data.scan import SERIAL_BELOW, load_scan_cache, scan_headers

ROOT = Path(__file__).resolve().parents[2]
NAMES = (
    "metadata scan, cold",
    "metadata scan, warm",
    "full decode (baseline)",
    "fingerprint, cold",
    "fingerprint, warm",
)


def _images(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index:04d}.png"
        Image.new("RGB", (8 + index % 5, 8), (index % 256, 0, 0)).save(path)
        paths.append(str(path))
    return paths


def test_cache_answers_unchanged_files_and_rescans_changed_ones(tmp_path):
    paths = _images(tmp_path / "img", 6)
    cache = tmp_path / "scan" / "d.json"

    cold = scan_headers(paths, cache)
    assert (cold.scanned, cold.cached) == (6, 0)
    assert cold.headers[paths[1]] == (9, 8, None)
    assert set(load_scan_cache(cache, default_max_pixels())) == set(paths)

    warm = scan_headers(paths, cache)
    assert (warm.scanned, warm.cached) == (0, 6)
    assert warm.headers == cold.headers

    # Same path, new content (size and mtime change): scanned again; a dropped path leaves the cache.
    Image.new("RGB", (30, 20)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))
    third = scan_headers(paths[:5], cache)
    assert (third.scanned, third.cached) == (1, 4)
    assert third.headers[paths[0]] == (30, 20, None)
    assert set(load_scan_cache(cache, default_max_pixels())) == set(paths[:5])
    assert not [p for p in cache.parent.iterdir() if p.name != "d.json"]  # no temp files left behind


def test_cache_remembers_unreadable_files_and_the_pixel_limit(tmp_path):
    paths = _images(tmp_path / "img", 2)
    Path(paths[1]).write_text("not an image")
    cache = tmp_path / "d.json"
    first = scan_headers(paths, cache, max_pixels=1_000)
    assert first.headers[paths[1]][2].startswith("not an image")
    assert scan_headers(paths, cache, max_pixels=1_000).cached == 2
    # A different limit changes the answers, so the cache is not used.
    strict = scan_headers(paths, cache, max_pixels=10)
    assert strict.scanned == 2 and "decompression bomb" in strict.headers[paths[0]][2]


def test_process_pool_gives_the_serial_results(tmp_path):
    paths = _images(tmp_path / "img", SERIAL_BELOW + 8)
    Path(paths[3]).write_bytes(b"")
    pooled = scan_headers(paths, workers=2)
    serial = scan_headers(paths, workers=1)
    assert pooled.headers == serial.headers
    assert pooled.headers[paths[3]][2] == "empty file (0 bytes)"
    assert list(pooled.headers) == paths


def test_bench_scan_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scan.py"), "--count", "40", "--size", "48", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    ).stdout
    rates = {}
    for line in out.splitlines():
        for name in NAMES:
            if line.startswith(name):
                rates[name] = float(line[len(name) :])
    assert set(rates) == set(NAMES)
    assert all(rate > 0 for rate in rates.values())
    assert "cold scan / full decode:" in out
    assert list(tmp_path.iterdir()) == []  # generated files are cleaned up
