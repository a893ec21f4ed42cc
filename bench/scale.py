"""How the data stages scale: fetch -> pair -> degrade -> cache_vae -> cache_text at 1x and 10x the items.

Each size runs in its own process (peak RSS is a per-process high-water mark) on a fresh project
with the tiny model: N generated edit images (distinct noise pictures, so no cache entry is shared,
each with its own caption) whose references the degrade stage generates (superresolution). The
header-only stages (fetch, pair) also run alone at `--header-sizes` (default 10,000 and 100,000 images).

Per stage and size it prints seconds per 1,000 images, the 10x/1x ratio of that time, and the peak
RSS of the stage's process (the high-water mark is reset before each stage through
/proc/self/clear_refs, so each stage gets its own; worker processes of scan and degrade are
reported apart as the largest child). Its last line is machine-readable:

    scale: time per item 10x/1x = R1, peak RSS 10x/1x = R2

R1 is the five stages' total time per image at the largest `--sizes` over the smallest; R2 the
largest per-stage peak RSS at the largest size over the smallest. With `--sizes 0` only the
header-only stages run, and the last line is theirs.

    python bench/scale.py                       # 1,000 and 10,000 images; fetch and pair at 10,000 and 100,000
    python bench/scale.py --sizes 500,5000 --header-sizes 0
    python bench/scale.py --sizes 0 --header-sizes 1000,10000 --image-size 16   # fetch and pair alone
    python bench/scale.py --quick               # a CI smoke run: 20 and 200 images, no header-only size
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ["fetch", "pair", "degrade", "cache_vae", "cache_text"]
HEADER_STAGES = ["fetch", "pair"]
WORDS = "red blue green small large old new bright dark round square tall wooden glass metal".split()


def _peak_rss_mb() -> float:
    """This process's peak resident set since the last reset (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> None:
    # "5" resets the peak RSS counter (Linux >= 4.0); elsewhere the peak stays cumulative.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def caption(index: int) -> str:
    """A distinct caption per image, so cache_text has N captions to encode."""
    a, b, c = WORDS[index % 15], WORDS[(index // 15) % 15], WORDS[(index // 225) % 15]
    return f"make the {a} {b} {c} object number {index} look sharp"


def write_images(folder: Path, count: int, size: int) -> None:
    """`count` distinct PNG noise pictures with a caption file each, 1,000 per sub-folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(count):
        sub = folder / f"part_{index // 1000:03d}"
        if index % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"img_{index:06d}.png", compress_level=1)
        (sub / f"img_{index:06d}.txt").write_text(caption(index))


def make_scale_project(project: Path, count: int, size: int) -> Path:
    from tests.conftest import make_project

    params_file = make_project(project, sample_data={"seed": 0, "count": 2, "size": 32})
    write_images(project / "scale/edit", count, size)
    datasets = [
        {
            "id": "scale-edit",
            "type": "local",
            "instance_data_dir": "scale/edit",
            "caption_strategy": "textfile",
            "resolution": size,
            "resolution_type": "pixel_area",
            "conditioning": [{"type": "superresolution", "blur_radius": 1.0, "add_noise": True, "noise_level": 0.02}],
        },
        {"id": "text-embeds", "dataset_type": "text_embeds", "default": True, "type": "local"},
    ]
    (project / "config/scale.json").write_text(json.dumps(datasets, indent=2))
    from tests.conftest import write_params

    write_params(params_file, data_backend_config="config/scale.json", eval_dataset_id=None)
    return params_file


def child(count: int, size: int, stages: list[str], out: Path) -> None:
    """Run `stages` once on a fresh project of `count` images; write seconds and peak RSS per stage."""
    import diffusers  # noqa: F401  (imported before timing: import cost is not the stages')
    import torch  # noqa: F401

    from kontext_core.progress import quiet_library_bars
    from kontext_core.stages import run_stage

    quiet_library_bars()
    with tempfile.TemporaryDirectory(prefix="kontext-scale-") as tmp:
        project = Path(tmp)
        started = time.perf_counter()
        params_file = make_scale_project(project, count, size)
        generate_s = time.perf_counter() - started
        run_stage("init", params_file)
        baseline = _peak_rss_mb()
        rows = {}
        for name in stages:
            _reset_peak_rss()
            started = time.perf_counter()
            manifest = run_stage(name, params_file)
            rows[name] = {"seconds": time.perf_counter() - started, "peak_rss_mb": _peak_rss_mb()}
            assert not manifest["skipped"], name
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        pairs = json.loads((project / "data/pair/pairs.json").read_text()) if "pair" in stages else []
        assert not pairs or len(pairs) == count, (len(pairs), count)
    out.write_text(
        json.dumps(
            {
                "count": count,
                "stages": rows,
                "baseline_rss_mb": baseline,
                "children_peak_rss_mb": children,
                "generate_seconds": generate_s,
            }
        )
    )


def run_child(count: int, size: int, stages: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--child", str(count), "--image-size", str(size), "--json", out.name]
        cmd += ["--stages", ",".join(stages)]
        env = {**os.environ, "KONTEXT_PROGRESS": os.environ.get("KONTEXT_PROGRESS", "off")}
        subprocess.run(cmd, check=True, env=env)
        return json.loads(Path(out.name).read_text())


def report(results: list[dict], stages: list[str]) -> tuple[float, float]:
    """Print the table; return (time-per-item ratio, peak RSS ratio) of the last size over the first."""
    first, last = results[0], results[-1]
    factor = last["count"] / first["count"]
    head = f"{'stage':<12}" + "".join(f"{'s/1k @' + str(r['count']):>14}" for r in results)
    head += f"{'ratio':>8}" + "".join(f"{'RSS MiB @' + str(r['count']):>16}" for r in results) + f"{'ratio':>8}"
    print(head)
    for name in stages:
        per_k = [r["stages"][name]["seconds"] / r["count"] * 1000 for r in results]
        rss = [r["stages"][name]["peak_rss_mb"] for r in results]
        print(
            f"{name:<12}"
            + "".join(f"{v:>14.3f}" for v in per_k)
            + f"{per_k[-1] / per_k[0]:>8.2f}"
            + "".join(f"{v:>16.0f}" for v in rss)
            + f"{rss[-1] / rss[0]:>8.2f}"
        )
    totals = [sum(r["stages"][n]["seconds"] for n in stages) / r["count"] * 1000 for r in results]
    peaks = [max(r["stages"][n]["peak_rss_mb"] for n in stages) for r in results]
    print(f"{'total':<12}" + "".join(f"{v:>14.3f}" for v in totals) + f"{totals[-1] / totals[0]:>8.2f}")
    for r in results:
        growth = max(r["stages"][n]["peak_rss_mb"] for n in stages) - r["baseline_rss_mb"]
        print(
            f"  {r['count']} images: process after imports and init {r['baseline_rss_mb']:.0f} MiB, "
            f"peak growth in the stages {growth:.0f} MiB, largest worker process {r['children_peak_rss_mb']:.0f} MiB"
        )
    print(f"  ({factor:.0f}x the images; ratios are last size over first, 1.00 = flat)")
    return totals[-1] / totals[0], peaks[-1] / peaks[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="image counts, smallest first (0: fetch and pair only)")
    parser.add_argument(
        "--header-sizes", default="10000,100000", help="counts for fetch and pair alone, smallest first (0: none)"
    )
    parser.add_argument("--image-size", type=int, default=32, help="edge in pixels (a multiple of 16)")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: --sizes 20,200 --header-sizes 0")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stages", default=",".join(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.image_size, args.stages.split(","), Path(args.json))
        return
    if args.quick:
        args.sizes, args.header_sizes = "20,200", "0"
    sizes = [int(s) for s in args.sizes.split(",") if s and int(s) > 0]
    header_sizes = [int(s) for s in args.header_sizes.split(",") if s and int(s) > 0]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.image_size}px images")
    results = []
    for count in sizes:
        results.append(run_child(count, args.image_size, STAGES))
        print(f"  ran {count} images", flush=True)
    if header_sizes:
        header = [run_child(c, args.image_size, HEADER_STAGES) for c in header_sizes]
        if len(header) == 1 and results:
            header.insert(0, results[0])
        print("header-only stages:")
        r1, r2 = report(header, HEADER_STAGES)
    if results:
        print("all five stages:")
        r1, r2 = report(results, STAGES)
    elif not header_sizes:
        parser.error("nothing to run: --sizes and --header-sizes are both empty")
    print(f"scale: time per item 10x/1x = {r1:.2f}, peak RSS 10x/1x = {r2:.2f}")


if __name__ == "__main__":
    main()
