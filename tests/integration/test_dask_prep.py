"""fetch, degrade, cache_vae and cache_text on a Dask LocalCluster write the same bytes as the in-process path."""

from __future__ import annotations

import os
import shutil

import pytest

from kontext_core.config import load_params
from kontext_core.fsutil import sha256_tree
from kontext_core.stages import run_stage
from tests.conftest import make_project, write_params

pytestmark = pytest.mark.slow

OUTPUTS = ("data/fetch/records.jsonl", "cache/degrade", "data/degrade", "cache/vae/latents", "cache/text/embeds")


def _prep(params_file, force: bool = False) -> dict[str, str]:
    for name in ("fetch", "degrade", "cache_vae", "cache_text"):
        manifest = run_stage(name, params_file, force=force)
        if name == "fetch" and force:
            # The header probes really ran as Dask tasks (every scan is cold: the scan cache is gone).
            assert manifest["info"]["dask_scan_tasks"] > 0
    project = params_file.parent
    return {rel: sha256_tree(project / rel) for rel in OUTPUTS}


def test_dask_local_cluster_gives_byte_identical_references_latents_and_embeds(tmp_path):
    params_file = make_project(tmp_path / "p", vae_batch_size=2, shared_init=True)
    run_stage("init", params_file)
    run_stage("fetch", params_file)
    run_stage("pair", params_file)
    single = _prep(params_file)
    project = params_file.parent
    for rel in ("cache/scan", "cache/degrade", "data/degrade", "cache/vae", "cache/text"):
        shutil.rmtree(project / rel)
    write_params(params_file, dask={"address": "local", "workers": 2})
    assert load_params(params_file).dask.address == "local"
    environ = dict(os.environ)
    on_dask = _prep(params_file, force=True)
    assert on_dask == single
    # Dask's nanny sets OMP_NUM_THREADS=1 (and more) in this process before spawning its workers:
    # left there, a later train subprocess would run on one thread and compute other bytes.
    assert dict(os.environ) == environ
    assert all(value != "missing" for value in on_dask.values())
