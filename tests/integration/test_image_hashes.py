"""Each image is hashed once per content: fetch's one hashing pass (the fingerprint's folder digest;
a row's image cell as fetch reads it) gives every record its digest, the pair table carries it, and
the cache keys use it, so a fresh process running cache_vae finds its cache hits without reading an image.

Hashes are counted where every file or image cell is hashed (`fsutil.read_sha256`, `fsutil.sha256_image_bytes`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kontext_core.data.images import IMAGE_EXTENSIONS
from kontext_core.stages import run_stage
from tests.conftest import ROOT, fetched_records, make_project
from tests.hash_count import BYTES, count_hashes

pytestmark = pytest.mark.slow

# Run in a new process: nothing is remembered from the process that ran fetch and pair.
FRESH_CACHE_VAE = """
import json, sys
from tests.hash_count import count_hashes
hashed = count_hashes([])
from kontext_core.stages import run_stage
result = run_stage("cache_vae", sys.argv[1], force=True)
print(json.dumps({"encoded": result["info"]["encoded"], "hashed": hashed}))
"""


def _images(hashed: list[str], project: Path) -> list[str]:
    """The images among hashed files (project-relative where inside it), and the hashed image cells."""
    found = []
    for item in hashed:
        if item == BYTES:
            found.append(item)
        elif item.lower().endswith(IMAGE_EXTENSIONS):
            path = Path(item).resolve()
            try:
                found.append(path.relative_to(project.resolve()).as_posix())
            except ValueError:
                found.append(str(path))
    return found


@pytest.fixture
def counted_hashes(monkeypatch) -> list[str]:
    return count_hashes([], monkeypatch.setattr)


@pytest.fixture
def counted_loads(monkeypatch) -> list[str]:
    """Each validation of a dataset file (`dataset_problems`: read, parse, check)."""
    import kontext_core.config.load as load

    loads: list[str] = []
    real = load.dataset_problems

    def counted(path, *args, **kwargs):
        loads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(load, "dataset_problems", counted)
    return loads


def _run_as_fresh_process(name: str, params_file: Path) -> dict:
    """The stage with nothing remembered of loaded dataset files (as in `kontext stage NAME` under DVC)."""
    from kontext_core.stages import datasets

    datasets._LOADED.clear()
    return run_stage(name, params_file)


def test_fetch_hashes_each_image_once_and_a_fresh_cache_vae_hashes_none(tmp_path, counted_hashes, counted_loads):
    params_file = make_project(tmp_path / "p", shared_init=True)
    project = params_file.parent

    _run_as_fresh_process("fetch", params_file)
    # Its preparation, fingerprint and body (and the digests it writes) share one load of the file.
    assert len(counted_loads) == 1

    records = [r for rows in fetched_records(project)["records"].values() for r in rows]
    local = [r["image"] for r in records if not r["image"].startswith(("hf:", "s3://"))]
    rows = [r for r in records if r["image"].startswith("hf:")]
    assert local and rows
    fetched = Counter(_images(counted_hashes, project))
    # Each local image once (the fingerprint's folder digest), each row's image cell at most once.
    assert {image: fetched[image] for image in local} == dict.fromkeys(local, 1)
    assert fetched[BYTES] <= len(rows)
    assert all(r["digest"] for r in records), "every record carries its image's digest"

    info = {}
    for name in ("pair", "degrade", "cache_vae"):
        loaded = len(counted_loads)
        info[name] = _run_as_fresh_process(name, params_file)["info"]
        assert len(counted_loads) == loaded + 1, f"{name} loads the dataset file once"
    # Through cache_vae in the same process no image file is read to be hashed again (generated
    # references are degrade's outputs, hashed by the engine as such). An image decoded to be stored
    # under a key made from its recorded digest (a cache miss) has the bytes it decodes checked
    # against that digest: no second read, and none at all on a cache hit.
    chain = Counter(i for i in _images(counted_hashes, project) if not i.startswith(("data/degrade/", "cache/")))
    assert {image: chain[image] for image in local} == dict.fromkeys(local, 1)
    misses = info["degrade"]["generated"] + info["cache_vae"]["encoded"]
    assert chain[BYTES] <= len(rows) + misses

    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_TEST_")}
    done = subprocess.run(
        [sys.executable, "-c", FRESH_CACHE_VAE, str(params_file)],
        cwd=project,
        env={**env, "PYTHONPATH": str(ROOT), "KONTEXT_PROGRESS": "off"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    assert fresh["encoded"] == 0  # every entry was a cache hit
    assert _images(fresh["hashed"], project) == []
