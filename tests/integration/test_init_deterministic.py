"""`init` builds the same bytes in any process, so DVC's hash of its outputs never changes under one
fingerprint (otherwise the first `dvc repro` after `kontext run` re-runs every stage). This covers the
pretrained tiny model: its weights, tokenizers and pretraining report, under two hash seeds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kontext_core.fsutil import sha256_tree
from kontext_core.stages import SAMPLE_DATA_DIR, TINY_MODEL_DIR
from kontext_core.stages.engine import read_manifest
from tests.conftest import ROOT, make_project

pytestmark = pytest.mark.slow


def _init_in_new_process(project, hash_seed: str) -> None:
    make_project(project)
    subprocess.run(
        [sys.executable, "-m", "flows.cli", "stage", "init"],
        cwd=project,
        # Different hash seeds: any set/dict-order dependence shows up as different bytes.
        env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
    )


def test_init_outputs_are_byte_identical_across_processes(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    _init_in_new_process(first, "1")
    _init_in_new_process(second, "2")
    for rel in (TINY_MODEL_DIR, SAMPLE_DATA_DIR):
        files = sorted(p.relative_to(first / rel) for p in (first / rel).rglob("*") if p.is_file())
        assert files, rel
        differing = [str(f) for f in files if (first / rel / f).read_bytes() != (second / rel / f).read_bytes()]
        assert not differing, f"{rel}: differ between processes: {differing}"
        assert sha256_tree(first / rel) == sha256_tree(second / rel)
    for rel in ("vae/diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.safetensors"):
        assert (first / TINY_MODEL_DIR / rel).exists(), rel
    assert (first / TINY_MODEL_DIR / "tokenizer_2" / "tokenizer.json").exists()
    # The pretraining report (held-out PSNRs) is computed from those bytes: the same numbers too;
    # only its wall-clock `seconds` may differ.
    reports = [read_manifest(project, "init")["info"]["pretrain"] for project in (first, second)]
    for report in reports:
        assert report.pop("seconds") > 0
    assert reports[0]["vae_psnr_held_out"] > 0 and reports[0] == reports[1]
