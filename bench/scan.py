"""Metadata scan speed: header-only scan (cold, then warm from the cache) against a full decode.

Generates `--count` image files (JPEG, PNG and WebP, `--size` pixels, spread over sub-folders),
then times on the same files:
- cold scan: what fetch does for a local dataset (walk, header probe on every core, cache written);
- warm scan: the same again, answered from the (path, size, mtime) cache;
- full-decode baseline: every file decoded to RGB, on the same number of processes as the scan;
- the fetch fingerprint of the folder (SHA-256 of every file), cold, then in a "new process" that
  reuses the hashes remembered by (path, size, mtime).
With `--hf-rows N`, also the Hugging Face row scan of fetch over N composite rows (`save_to_disk`).
Usage: `python bench/scan.py [--count 10000] [--size 512] [--workers N] [--dir DIR] [--hf-rows N]`.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kontext_core import fsutil  # noqa: E402
from kontext_core.config import DatasetEntry  # noqa: E402
from kontext_core.data.images import open_rgb  # noqa: E402
from kontext_core.data.local import find_images, local_records  # noqa: E402
from kontext_core.data.scan import cpu_count, folder_digest, pool_context  # noqa: E402

FORMATS = (("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"))


def _encoded_bases(size: int, n: int = 24) -> list[tuple[bytes, str]]:
    """A few distinct pictures (smooth gradients with noise, like photos), encoded once each."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    bases = []
    for index in range(n):
        rgb = np.stack([xx * rng.uniform(50, 255), yy * rng.uniform(50, 255), (xx + yy) * rng.uniform(20, 120)], -1)
        rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
        fmt, ext = FORMATS[index % len(FORMATS)]
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt, quality=90)
        bases.append((buf.getvalue(), ext))
    return bases


def generate(root: Path, count: int, size: int) -> None:
    bases = _encoded_bases(size)
    for index in range(count):
        data, ext = bases[index % len(bases)]
        folder = root / f"part_{index // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{index:06d}{ext}").write_bytes(data)


def _decode_chunk(paths: list[str]) -> int:
    return sum(open_rgb(Path(p)).width > 0 for p in paths)


def decode_all(paths: list[str], workers: int) -> int:
    if workers <= 1:
        return _decode_chunk(paths)
    size = -(-len(paths) // (workers * 4))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    with ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
        return sum(pool.map(_decode_chunk, chunks))


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def run(root: Path, count: int, size: int, workers: int) -> dict[str, float]:
    data_dir, cache = root / "images", root / "cache" / "scan.json"
    generate(data_dir, count, size)
    entry = DatasetEntry(id="bench", instance_data_dir=str(data_dir), caption_strategy=None)

    def scan() -> int:
        records, problems = local_records(entry, root, cache, workers=workers)
        assert not problems, problems[:3]
        return len(records)

    cold_s, cold_n = _timed(scan)
    warm_s, warm_n = _timed(scan)
    # The fetch fingerprint hashes the folder; a new process reuses the hashes remembered on disk.
    digest_cold_s, digest = _timed(lambda: folder_digest(data_dir, root / "cache" / "hashes.json"))
    fsutil._FILE_HASHES.clear()
    digest_warm_s, digest_again = _timed(lambda: folder_digest(data_dir, root / "cache" / "hashes.json"))
    assert digest == digest_again
    paths = [image.real for image in find_images(data_dir.resolve())[0]]
    decode_s, decode_n = _timed(lambda: decode_all(paths, workers))
    assert cold_n == warm_n == decode_n == count, (cold_n, warm_n, decode_n)
    return {
        "cold": count / cold_s,
        "warm": count / warm_s,
        "decode": count / decode_s,
        "digest_cold": count / digest_cold_s,
        "digest_warm": count / digest_warm_s,
    }


def run_hf(root: Path, rows: int, size: int, workers: int) -> float:
    """Rows/s of the Hugging Face row scan over a `save_to_disk` dataset of 2-panel composites."""
    import datasets

    from kontext_core.data.huggingface import huggingface_records

    bases = [data for data, ext in _encoded_bases(size) if ext == ".jpg"]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    block = datasets.Dataset.from_dict(
        {"image": [{"bytes": bases[i % len(bases)], "path": None} for i in range(1000)], "caption": ["c"] * 1000},
        features=features,
    )
    table = datasets.concatenate_datasets([block] * -(-rows // 1000)).select(range(rows)).flatten_indices()
    table.save_to_disk(str(root / "rows"))
    entry = DatasetEntry.model_validate(
        {
            "id": "rows",
            "type": "huggingface",
            "dataset_name": str(root / "rows"),
            "caption_strategy": "huggingface",
            "huggingface": {"composite_image_config": {"enabled": True, "image_count": 2, "select_index": 1}},
        }
    )
    seconds, (records, problems) = _timed(lambda: huggingface_records(entry, root, workers=workers))
    assert len(records) == rows and not problems
    return rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=512, help="edge of the square test images, pixels")
    parser.add_argument("--workers", type=int, default=cpu_count())
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temp dir)")
    parser.add_argument("--hf-rows", type=int, default=0, help="also time the Hugging Face row scan on N rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rates = run(Path(tmp), args.count, args.size, args.workers)
        if args.hf_rows:
            rates["hf"] = run_hf(Path(tmp), args.hf_rows, args.size, args.workers)
    print(f"{args.count} files, {args.size}x{args.size} px (jpg/png/webp), {args.workers} processes")
    print(f"{'measure':<26}{'images/s':>12}")
    print(f"{'metadata scan, cold':<26}{rates['cold']:>12.0f}")
    print(f"{'metadata scan, warm':<26}{rates['warm']:>12.0f}")
    print(f"{'full decode (baseline)':<26}{rates['decode']:>12.0f}")
    print(f"{'fingerprint, cold':<26}{rates['digest_cold']:>12.0f}")
    print(f"{'fingerprint, warm':<26}{rates['digest_warm']:>12.0f}")
    if "hf" in rates:
        print(f"{'hf row scan (composites)':<26}{rates['hf']:>12.0f}")
    print(f"cold scan / full decode: {rates['cold'] / rates['decode']:.1f}x")


if __name__ == "__main__":
    main()
