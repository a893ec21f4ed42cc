"""How close the stages come to their bare limits, each measured side by side in one run.

- cache_vae: the stage's images/s (decode, crop, encode, write, index) against a bare `vae.encode`
  loop over the same images decoded and cropped beforehand, in batches of the stage's batch size;
- cache_text: the stage's prompts/s against bare text-encoder calls (CLIP + T5) on the same
  captions tokenized beforehand, in the stage's batches;
- scan: the header scan (`scan_headers`, cold, no cache) against a bare loop that opens each file
  and reads its first 64 KiB, both on the same number of processes;
- train: the training loop with its MLflow logger against a bare step (bench/train_step.py).

Each prints `<name> vs bare: R`, R = the stage's throughput over the bare one's (1.0 = no overhead).
Every measurement alternates stage and bare `--repeats` times and keeps each one's best, so a burst
of load from other work on the machine does not land on one side only.

    python bench/near_limit.py                       # all four
    python bench/near_limit.py --only vae,text --images 200 --image-size 64
    python bench/near_limit.py --only text --images 2000 --text-length 512   # FLUX.1's own T5 length
    python bench/near_limit.py --quick               # CI smoke run: tiny sizes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from kontext_core.stages import run_stage  # noqa: E402

BENCHES = ["vae", "text", "scan", "train"]


def _best(fn, repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def prepared_project(tmp: Path, images: int, size: int) -> Path:
    """A project whose pair and degrade stages have run on `images` distinct generated images."""
    from scale import make_scale_project

    params_file = make_scale_project(tmp, images, size)
    for name in ("init", "fetch", "pair", "degrade"):
        run_stage(name, params_file)
    return params_file


def _timed_stage(params_file: Path, name: str, store: str) -> float:
    shutil.rmtree(params_file.parent / store, ignore_errors=True)
    started = time.perf_counter()
    run_stage(name, params_file, force=True)
    return time.perf_counter() - started


def bench_vae(params_file: Path, repeats: int) -> float:
    from kontext_core.cache.vae_cache import image_to_tensor
    from kontext_core.config import load_params
    from kontext_core.data.buckets import apply_crop, resize_and_crop
    from kontext_core.data.sources import open_ref
    from kontext_core.model.load import load_vae
    from kontext_core.stages.cache_vae import _crop_of, vae_batch_size

    project = params_file.parent
    params = load_params(params_file)
    pairs = json.loads((project / "data/pair/pairs.json").read_text())
    items = [(p["target"], _crop_of(p)) for p in pairs]
    items += [(r["image"], _crop_of(r)) for p in pairs for r in p["references"]]
    tensors = []
    for image, plan in items:
        img = open_ref(image, project)
        img = resize_and_crop(img, tuple(plan["size"])) if plan.get("centre") else apply_crop(img, plan)
        tensors.append(image_to_tensor(img))
    batch = vae_batch_size(params)
    by_size: dict[tuple, list] = {}
    for t in tensors:
        by_size.setdefault(tuple(t.shape), []).append(t)
    batches = [torch.cat(g[i : i + batch]) for g in by_size.values() for i in range(0, len(g), batch)]
    vae = load_vae(params, project)

    @torch.no_grad()
    def bare() -> float:
        started = time.perf_counter()
        for pixels in batches:
            vae.encode(pixels).latent_dist.mode()
        return time.perf_counter() - started

    stage_s, bare_s = [], []
    for _ in range(repeats):
        stage_s.append(_timed_stage(params_file, "cache_vae", "cache/vae"))
        bare_s.append(bare())
    n = len(tensors)
    stage_rate, bare_rate = n / min(stage_s), n / min(bare_s)
    buckets = ", ".join(f"{w}x{h}" for (_, _, h, w) in sorted(by_size))  # buckets never go below 64 px
    print(
        f"cache_vae: {n} images in buckets {buckets}, batch {batch}: "
        f"stage {stage_rate:.1f} images/s, bare {bare_rate:.1f} images/s"
    )
    return stage_rate / bare_rate


def bench_text(params_file: Path, repeats: int) -> float:
    from kontext_core.cache.text_cache import sequence_length
    from kontext_core.config import load_params
    from kontext_core.model.load import load_text_pipeline
    from kontext_core.stages.cache_text import text_batch_size

    project = params_file.parent
    params = load_params(params_file)
    pairs = json.loads((project / "data/pair/pairs.json").read_text())
    captions = sorted({p["caption"] for p in pairs} | {""})
    pipe = load_text_pipeline(params, project)
    batch = text_batch_size(params)
    length = sequence_length(params)  # the stage's own T5 length (tokenizer_max_length)
    chunks = [captions[i : i + batch] for i in range(0, len(captions), batch)]
    clip_ids = [
        pipe.tokenizer(
            c, padding="max_length", max_length=pipe.tokenizer_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        for c in chunks
    ]
    t5_ids = [
        pipe.tokenizer_2(c, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        for c in chunks
    ]

    @torch.no_grad()
    def bare() -> float:
        started = time.perf_counter()
        for clip, t5 in zip(clip_ids, t5_ids, strict=True):
            pipe.text_encoder(clip, output_hidden_states=False)
            pipe.text_encoder_2(t5, output_hidden_states=False)
        return time.perf_counter() - started

    stage_s, bare_s = [], []
    for _ in range(repeats):
        stage_s.append(_timed_stage(params_file, "cache_text", "cache/text"))
        bare_s.append(bare())
    n = len(captions)
    stage_rate, bare_rate = n / min(stage_s), n / min(bare_s)
    print(
        f"cache_text: {n} captions, T5 length {length}, batch {batch}: "
        f"stage {stage_rate:.1f} prompts/s, bare {bare_rate:.1f} prompts/s"
    )
    return stage_rate / bare_rate


def _read_heads(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            total += len(handle.read(65536))
    return total


def bench_scan(tmp: Path, count: int, size: int, repeats: int) -> float:
    from concurrent.futures import ProcessPoolExecutor

    from scan import generate

    from kontext_core.data.local import find_images
    from kontext_core.data.scan import SERIAL_BELOW, cpu_count, pool_context, scan_headers

    root = tmp / "scan"
    generate(root, count, size)
    paths = [image.real for image in find_images(root)[0]]
    workers = cpu_count()

    def stage() -> float:
        started = time.perf_counter()
        scan_headers(paths, cache_file=None, workers=workers)
        return time.perf_counter() - started

    def bare() -> float:
        # The same chunking over the same pool as the scan, so only the per-file work differs.
        started = time.perf_counter()
        chunk = -(-len(paths) // (workers * 8))
        chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
        if workers > 1 and len(paths) >= SERIAL_BELOW:  # the scan's own rule for using a pool
            with ProcessPoolExecutor(max_workers=workers, mp_context=pool_context()) as pool:
                list(pool.map(_read_heads, chunks))
        else:
            _read_heads(paths)
        return time.perf_counter() - started

    stage_s, bare_s = [], []
    for _ in range(repeats):
        stage_s.append(stage())
        bare_s.append(bare())
    stage_rate, bare_rate = count / min(stage_s), count / min(bare_s)
    print(
        f"scan: {count} files of {size}px, {workers} processes: header scan {stage_rate:.0f} files/s, "
        f"open + read 64 KiB {bare_rate:.0f} files/s"
    )
    return stage_rate / bare_rate


def bench_train(quick: bool) -> float:
    cmd = [sys.executable, str(ROOT / "bench/train_step.py"), "--mlflow", "batched"]
    cmd += ["--size", "tiny", "--steps", "12", "--text-len", "64", "--repeats", "1"] if quick else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    print(out, end="")
    line = next(line for line in out.splitlines() if line.startswith("train loop vs bare:"))
    return float(line.rsplit(":", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {BENCHES}")
    parser.add_argument("--images", type=int, default=300, help="edit images for the cache benches (x2 encodes)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--scan-files", type=int, default=4000)
    parser.add_argument("--scan-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--text-length",
        type=int,
        default=None,
        help="T5 tokens per caption (tokenizer_max_length) for the text bench; default: the test params' value",
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny sizes, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.images, args.image_size, args.scan_files, args.scan_size, args.repeats = 12, 32, 60, 64, 1
    only = args.only.split(",")
    os.environ.setdefault("KONTEXT_PROGRESS", "off")
    from kontext_core.progress import quiet_library_bars

    quiet_library_bars()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="kontext-near-") as tmp_name:
        tmp = Path(tmp_name)
        if "vae" in only or "text" in only:
            params_file = prepared_project(tmp / "project", args.images, args.image_size)
            if args.text_length:
                from tests.conftest import write_params

                write_params(params_file, tokenizer_max_length=args.text_length)
            if "vae" in only:
                ratios["cache_vae"] = bench_vae(params_file, args.repeats)
            if "text" in only:
                ratios["cache_text"] = bench_text(params_file, args.repeats)
        if "scan" in only:
            ratios["scan"] = bench_scan(tmp, args.scan_files, args.scan_size, args.repeats)
    if "train" in only:
        ratios["train loop"] = bench_train(args.quick)
    for name, ratio in ratios.items():
        if name != "train loop":  # train_step.py printed its own line
            print(f"{name} vs bare: {ratio:.2f}")


if __name__ == "__main__":
    main()
