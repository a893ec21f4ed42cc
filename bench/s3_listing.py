"""`type: aws` datasets against a local S3 API server (moto's server mode on 127.0.0.1).

Prints:
- objects listed per second (paginated ListObjectsV2, 1,000 keys a page) over `--count` images;
- header reads per second: fetch's record scan of the same set, cold (a ranged GET of the first and
  last bytes per image, `HEADER_THREADS` at once) and warm (answered from the scan cache by ETag);
  with the bytes each read;
- with `--pipeline`: the tiny demo pipeline trained from aws sets, then every stage forced again on
  warm caches, and the bytes each stage downloads then (goal: no image bytes outside validation,
  which edits real pixels; a plain warm re-run skips every stage and downloads nothing).

Usage: `python bench/s3_listing.py [--count 2000] [--size 256] [--pipeline]`. Needs `moto[server]`
(the dev extra). The numbers are for a loopback server: they measure this code's request pattern and
overheads, not a network.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kontext_core.config import load_datasets  # noqa: E402
from kontext_core.data.s3_backend import S3Backend  # noqa: E402
from kontext_core.storage import s3  # noqa: E402

BUCKET = "bench-data"


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
                return proc, endpoint
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise SystemExit(f"moto_server did not start on {endpoint}") from None
            time.sleep(0.2)


def encoded(size: int, n: int = 16) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for index in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG" if index % 2 else "JPEG")
        out.append(buf.getvalue())
    return out


def entry_for(endpoint: str, entry_id: str, prefix: str, tmp: Path, **extra) -> object:
    config = [
        {
            "id": entry_id,
            "type": "aws",
            "aws_bucket_name": BUCKET,
            "aws_data_prefix": prefix,
            "aws_endpoint_url": endpoint,
            "aws_region_name": "us-east-1",
            "caption_strategy": "textfile",
            "conditioning": [{"type": "jpeg_artifacts", "quality": 20}],
            **extra,
        }
    ]
    path = tmp / f"{entry_id}.json"
    path.write_text(json.dumps(config))
    return load_datasets(path, base_dir=tmp).enabled()[0]


def bench_listing(endpoint: str, count: int, size: int, tmp: Path) -> None:
    client = s3.client(s3.S3Store(BUCKET, endpoint, "us-east-1"))
    client.create_bucket(Bucket=BUCKET)
    blobs = encoded(size)

    def upload(index: int) -> None:
        ext = ".png" if index % 2 else ".jpg"
        key = f"set/part_{index // 500:02d}/img_{index:05d}"
        client.put_object(Bucket=BUCKET, Key=key + ext, Body=blobs[index % len(blobs)])
        client.put_object(Bucket=BUCKET, Key=key + ".txt", Body=f"caption {index}".encode())

    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(upload, range(count)))
    print(f"upload: {count} images + {count} captions in {time.perf_counter() - start:.1f} s")

    store = s3.S3Store(BUCKET, endpoint, "us-east-1")
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        listed = s3.list_objects(store, "set/")
        runs.append(time.perf_counter() - start)
    best = min(runs)
    print(f"listing: {len(listed)} objects in {best:.3f} s = {len(listed) / best:,.0f} objects listed/s (best of 3)")

    entry = entry_for(endpoint, "bench", "set", tmp)
    backend = S3Backend()
    scan = tmp / "scan"
    scan.mkdir()
    s3.DOWNLOADED.clear()
    start = time.perf_counter()
    records, problems = backend.records(entry, tmp, scan)
    cold = time.perf_counter() - start
    header_bytes, text_bytes = s3.DOWNLOADED.get("header", 0), s3.DOWNLOADED.get("text", 0)
    print(
        f"header reads (cold, with the listing and {count} captions): {len(records)} images in {cold:.2f} s "
        f"= {len(records) / cold:,.0f} header reads/s; {header_bytes / len(records):,.0f} header bytes per image "
        f"of {len(blobs[0]):,}/{len(blobs[1]):,} (jpg/png); caption bytes: {text_bytes:,}; "
        f"image bytes: {s3.DOWNLOADED.get('image', 0)}; "
        f"problems: {len(problems)}"
    )
    headers_only = entry_for(endpoint, "bench-headers", "set", tmp, caption_strategy="filename")
    s3.DOWNLOADED.clear()
    start = time.perf_counter()
    plain, _ = backend.records(headers_only, tmp, scan)
    cold_headers = time.perf_counter() - start
    print(
        f"header reads (cold, listing + headers only): {len(plain)} images in {cold_headers:.2f} s = "
        f"{len(plain) / cold_headers:,.0f} header reads/s ({s3.DOWNLOADED.get('header', 0):,} bytes)"
    )
    s3.DOWNLOADED.clear()
    start = time.perf_counter()
    again, _ = backend.records(entry, tmp, scan)
    warm = time.perf_counter() - start
    assert again == records
    print(
        f"fetch warm (listing + scan cache): {len(again)} images in {warm:.2f} s = {len(again) / warm:,.0f} "
        f"images/s; bytes downloaded: {sum(s3.DOWNLOADED.values())}"
    )


def bench_pipeline(endpoint: str, tmp: Path) -> None:
    """The tiny demo pipeline from aws sets; then each stage forced on warm caches, bytes per stage."""
    import yaml

    from kontext_core.stages import STAGE_ORDER, run_stage

    project = tmp / "project"
    shutil.copytree(ROOT / "config", project / "config")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(
        max_train_steps=4,
        eval_timesteps=2,
        validation_num_inference_steps=2,
        data_backend_config="config/aws.json",
        eval_dataset_id="pairs-eval",
        sample_data={"seed": 0, "count": 4, "size": 64},
        tiny_model={"seed": 0, "pretrain_vae_steps": 0, "pretrain_transformer_steps": 0},
    )
    params["mlflow"]["tracking_uri"] = f"sqlite:///{project / 'mlflow.db'}"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sets = [
        ("pairs-edited", "pairs/edited", {"caption_strategy": "textfile", "conditioning_data": ["pairs-ref"]}),
        ("pairs-ref", "pairs/reference", {"conditioning_type": "reference_strict", "caption_strategy": None}),
        ("pairs-eval", "pairs-eval/edited", {"caption_strategy": "textfile", "conditioning_data": ["eval-ref"]}),
        ("eval-ref", "pairs-eval/reference", {"conditioning_type": "reference_strict", "caption_strategy": None}),
        (
            "sharp",
            "clean",
            {"caption_strategy": "textfile", "conditioning": [{"type": "superresolution", "blur_radius": 2.0}]},
        ),
    ]
    entries = [
        {
            "id": i,
            "type": "aws",
            "aws_bucket_name": BUCKET,
            "aws_data_prefix": f"samples/{folder}",
            "aws_endpoint_url": endpoint,
            "aws_region_name": "us-east-1",
            "resolution": 64,
            **extra,
        }
        for i, folder, extra in sets
    ]
    (project / "config" / "aws.json").write_text(json.dumps(entries))
    run_stage("init", project / "params.yaml")
    client = s3.client(s3.S3Store(BUCKET, endpoint, "us-east-1"))
    for path in sorted((project / "data" / "samples").rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"samples/{path.relative_to(project / 'data' / 'samples')}")
    cold: dict[str, int] = {}
    for name in STAGE_ORDER:
        s3.DOWNLOADED.clear()
        run_stage(name, project / "params.yaml")
        cold[name] = sum(s3.DOWNLOADED.values())
    print("bytes downloaded per stage (cold run | every stage forced on warm caches, image bytes in brackets):")
    for name in STAGE_ORDER:
        s3.DOWNLOADED.clear()
        run_stage(name, project / "params.yaml", force=True)
        got = dict(s3.DOWNLOADED)
        print(f"  {name:10s} {cold[name]:>9,d} | {sum(got.values()):>9,d}  (image {got.get('image', 0):,d})")
    s3.DOWNLOADED.clear()
    skipped = [run_stage(name, project / "params.yaml")["skipped"] for name in STAGE_ORDER]
    print(
        f"plain warm re-run: {sum(skipped)}/{len(skipped)} stages skipped, "
        f"bytes downloaded: {sum(s3.DOWNLOADED.values())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--pipeline", action="store_true", help="also the per-stage bytes of the tiny pipeline")
    args = parser.parse_args()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "bench")  # moto without authentication accepts any key
    proc, endpoint = start_server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bench_listing(endpoint, args.count, args.size, Path(tmp))
            if args.pipeline:
                bench_pipeline(endpoint, Path(tmp))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
