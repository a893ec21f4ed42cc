"""degrade + cache_vae on Dask: 2 LocalCluster workers against 1, and the in-process path.

Builds a project of the demo's datasets with `--count` samples of `--size` pixels (the tiny model),
runs init, fetch and pair once, then times degrade + cache_vae from empty caches:
- in process (dask.address: null, degrade's own worker processes);
- on a Dask LocalCluster with 1 worker, then with 2 workers (dask.address: local).
Cluster start-up is inside each stage's time, as a user waits for it. Also checks that every
engine wrote the same bytes. Usage: `python bench/dask_prep.py [--count 48] [--size 128]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kontext_core.fsutil import sha256_tree  # noqa: E402
from kontext_core.stages import run_stage  # noqa: E402
from tests.conftest import make_project, write_params  # noqa: E402

OUTPUTS = ("cache/degrade", "data/degrade", "cache/vae/latents")


def _timed_prep(params_file: Path) -> tuple[float, dict[str, str]]:
    project = params_file.parent
    for rel in ("cache/degrade", "data/degrade", "cache/vae"):
        shutil.rmtree(project / rel, ignore_errors=True)
    started = time.perf_counter()
    for name in ("degrade", "cache_vae"):
        run_stage(name, params_file, force=True)
    seconds = time.perf_counter() - started
    return seconds, {rel: sha256_tree(project / rel) for rel in OUTPUTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=48, help="samples per demo dataset")
    parser.add_argument("--size", type=int, default=128, help="sample image edge in pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kontext-dask-bench-") as tmp:
        params_file = make_project(
            Path(tmp), sample_data={"seed": 0, "count": args.count, "size": args.size}, vae_batch_size=4
        )
        for name in ("init", "fetch", "pair"):
            run_stage(name, params_file)
        results = {}
        for label, dask in (
            ("in process", {"address": None}),
            ("dask 1 worker", {"address": "local", "workers": 1}),
            ("dask 2 workers", {"address": "local", "workers": 2}),
        ):
            write_params(params_file, dask=dask)
            results[label] = _timed_prep(params_file)
            print(f"{label:<16} degrade+cache_vae {results[label][0]:7.2f} s", flush=True)
        identical = len({json_key(h) for _, h in results.values()}) == 1
        one, two = results["dask 1 worker"][0], results["dask 2 workers"][0]
        print(f"speed-up 2 workers vs 1: {one / two:.2f}x  (identical outputs: {identical})")


def json_key(hashes: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(hashes.items()))


if __name__ == "__main__":
    main()
