"""The init stage's pretrained tiny model: training helps, and the held-out set stays apart.

(That it is byte-identical across processes is tests/integration/test_init_deterministic.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kontext_core.data.samples import write_sample_data
from kontext_core.model.tiny import build_tiny_pipeline
from kontext_core.train.pretrain_data import load_pretrain_images, to_pixels
from kontext_core.train.pretrain_tiny import PRETRAINED_VAE_GROUPS, PRETRAINED_VAE_WIDTHS, fixed_cpu_math
from kontext_core.train.pretrain_vae import reconstruction_psnr, train_vae


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    return write_sample_data(tmp_path_factory.mktemp("pretrain") / "samples", count=4, size=64, seed=0)


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
