"""The init stage's pretrained tiny model: deterministic across processes, and training helps."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kontext_core.data.samples import write_sample_data
from kontext_core.model.tiny import build_tiny_pipeline
from kontext_core.train.pretrain_data import load_pretrain_images, to_pixels
from kontext_core.train.pretrain_tiny import PRETRAINED_VAE_GROUPS, PRETRAINED_VAE_WIDTHS, fixed_cpu_math
from kontext_core.train.pretrain_vae import reconstruction_psnr, train_vae

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    return write_sample_data(tmp_path_factory.mktemp("pretrain") / "samples", count=4, size=64, seed=0)


def _file_hashes(model_dir: Path) -> dict[str, str]:
    return {
        path.relative_to(model_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(model_dir.rglob("*"))
        if path.is_file()
    }


def test_pretrained_tiny_model_is_byte_identical_across_processes(samples, tmp_path):
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from kontext_core.train.pretrain_tiny import PretrainPlan, save_pretrained_tiny\n"
        "report = save_pretrained_tiny(Path(sys.argv[1]), Path(sys.argv[2]), PretrainPlan(0, 3, 3))\n"
        "print(json.dumps(report['vae_psnr_held_out']))\n"
    )
    outputs = []
    for index, hash_seed in enumerate(("1", "2")):
        out = tmp_path / f"model-{index}"
        done = subprocess.run(
            [sys.executable, "-c", script, str(out), str(samples)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        outputs.append((_file_hashes(out), json.loads(done.stdout.strip().splitlines()[-1])))
    (first, first_psnr), (second, second_psnr) = outputs
    assert "vae/diffusion_pytorch_model.safetensors" in first
    assert "transformer/diffusion_pytorch_model.safetensors" in first
    assert "tokenizer_2/tokenizer.json" in first
    assert first == second
    assert first_psnr == second_psnr


def test_vae_pretraining_improves_held_out_reconstruction(samples):
    images = load_pretrain_images(samples)
    pixels, held_out = to_pixels(images.train, 64), to_pixels(images.held_out, 64)
    with fixed_cpu_math():
        vae = build_tiny_pipeline(0, PRETRAINED_VAE_WIDTHS, PRETRAINED_VAE_GROUPS).vae
        before = reconstruction_psnr(vae, held_out)
        train_vae(vae, pixels, steps=30, learning_rate=3e-3, generator=torch.Generator().manual_seed(0))
        after = reconstruction_psnr(vae, held_out)
    assert after > before + 1.0, (before, after)


def test_pretraining_reads_the_held_out_set_apart(samples):
    images = load_pretrain_images(samples)
    # 4 composites x 2 panels, 4 pairs x (reference + edit), 4 clean pictures; eval: 2 pairs.
    assert len(images.train) == len(images.captions) == 20
    assert len(images.held_out) == 4
    assert all(images.captions)
