"""Build the tiny model the `init` stage ships: the random tiny pipeline, then briefly pretrained
on the sample data so it behaves like a (very small) pretrained Kontext model.

1. The VAE learns to reconstruct the sample pictures (PSNR reported on the held-out eval pictures).
2. The transformer learns the identity edit on the VAE's latents (output = reference).

The pretrained variant is not the unit tests' geometry: its VAE downsamples by 2, not 8 (a tiny
8x VAE trained for a minute on a CPU stays near 14 dB; a 2x one reaches 21-23 dB on held-out pictures), and its
transformer has FLUX.1's own head geometry (one head of 128 with rotary axes 16/56/56), which
the reference lookup needs. Pictures are taught at `tiny_model.resolution` (32 px for the demo,
which then trains and validates at 64 px buckets).

The text encoders stay random: they only have to tell captions apart, which they do. Training runs
on the CPU with a fixed thread count and seeded generators, so a seed gives the same bytes in every
process (reductions split across a different number of threads would round differently).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxKontextPipeline

from kontext_core.config import TinyModelSection
from kontext_core.fsutil import atomic_dir
from kontext_core.model.tiny import TINY_TRANSFORMER_CONFIG, build_tiny_pipeline
from kontext_core.train.pretrain_data import augmented_views, load_pretrain_images, to_pixels
from kontext_core.train.pretrain_edit import caption_embeddings, positional_copy_init, train_identity
from kontext_core.train.pretrain_vae import latent_stats, normalised, reconstruction_psnr, train_vae

log = logging.getLogger(__name__)

VIEWS = 4
# Fixed, so every machine rounds the same way; two keeps the minute of pretraining a minute on CI's cores.
THREADS = 2
VAE_LEARNING_RATE = 3e-3
TRANSFORMER_LEARNING_RATE = 1e-3
PRETRAINED_VAE_WIDTHS = (16, 32)
PRETRAINED_VAE_GROUPS = 8
# The unit tests' tiny transformer with FLUX.1's own head: one head of 128, rotary axes 16/56/56.
PRETRAINED_TRANSFORMER_CONFIG = {
    **TINY_TRANSFORMER_CONFIG,
    "attention_head_dim": 128,
    "num_attention_heads": 1,
    "axes_dims_rope": (16, 56, 56),
}


@dataclass(frozen=True)
class PretrainPlan:
    seed: int = 0
    vae_steps: int = 300
    transformer_steps: int = 300
    resolution: int = 32
    max_sequence_length: int = 512


def plan_from_params(section: TinyModelSection, max_sequence_length: int = 512) -> PretrainPlan:
    return PretrainPlan(
        seed=section.seed,
        vae_steps=section.pretrain_vae_steps,
        transformer_steps=section.pretrain_transformer_steps,
        resolution=section.resolution,
        max_sequence_length=max_sequence_length,
    )


@contextlib.contextmanager
def fixed_cpu_math(threads: int = THREADS) -> Iterator[None]:
    """Same thread count and deterministic kernels while pretraining; the caller's settings after."""
    saved_threads = torch.get_num_threads()
    saved_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_deterministic)


@torch.no_grad()
def identity_psnr(
    pipe: FluxKontextPipeline, references: list, caption: str, plan: PretrainPlan, steps: int = 8
) -> float:
    """How closely the pipeline returns each reference unchanged (mean PSNR, validation settings)."""
    from kontext_core.config import Params
    from kontext_core.validate.metrics import psnr
    from kontext_core.validate.run import edit_image

    pipe.set_progress_bar_config(disable=True)  # one edit per reference: no bar each
    settings = Params(
        validation_guidance=2.5, validation_num_inference_steps=steps, tokenizer_max_length=plan.max_sequence_length
    )
    size = plan.resolution
    scores = [
        psnr(edit_image(pipe, reference, caption, size, size, settings, index), reference)
        for index, reference in enumerate(references)
    ]
    return sum(scores) / len(scores)


def pretrain(pipe: FluxKontextPipeline, samples_dir: Path, plan: PretrainPlan) -> dict[str, Any]:
    """Train the pipeline's VAE, then its transformer, in place; returns what was measured."""
    from kontext_core.data.buckets import resize_and_crop

    started = time.perf_counter()
    images = load_pretrain_images(samples_dir)
    generator = torch.Generator().manual_seed(plan.seed)
    size = plan.resolution
    pixels = augmented_views(images.train, size, generator, VIEWS)
    held_out = to_pixels(images.held_out, size)
    report: dict[str, Any] = {"train_images": len(images.train), "held_out_images": len(images.held_out)}
    if plan.vae_steps:
        losses = train_vae(pipe.vae, pixels, plan.vae_steps, VAE_LEARNING_RATE, generator)
        report["vae_loss_last"] = losses[-1]
    pipe.vae.requires_grad_(False)
    report["vae_psnr_held_out"] = reconstruction_psnr(pipe.vae, held_out)
    report["latent_stats"] = latent_stats(pipe.vae, pixels)
    log.info("tiny VAE: %.2f dB on %d held-out pictures", report["vae_psnr_held_out"], len(images.held_out))
    references = [resize_and_crop(img, (size, size)) for img in images.held_out]
    if plan.transformer_steps:
        positional_copy_init(pipe.transformer)
        with torch.no_grad():
            latents = torch.cat([normalised(pipe.vae, chunk) for chunk in pixels.split(32)])
            prompt_embeds, pooled = caption_embeddings(pipe, images.captions, plan.max_sequence_length)
        steps, rate = plan.transformer_steps, TRANSFORMER_LEARNING_RATE
        losses = train_identity(pipe.transformer, latents, prompt_embeds, pooled, steps, rate, generator)
        report["transformer_loss_last"] = losses[-1]
    pipe.transformer.requires_grad_(False)
    report["identity_psnr_held_out"] = identity_psnr(pipe, references, images.captions[0], plan)
    log.info("tiny transformer: identity edit %.2f dB on held-out pictures", report["identity_psnr_held_out"])
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def save_pretrained_tiny(out_dir: Path, samples_dir: Path, plan: PretrainPlan) -> dict[str, Any]:
    """Build, pretrain and save the tiny pipeline (atomically); returns the pretraining report."""
    with fixed_cpu_math():
        pipe = build_tiny_pipeline(
            plan.seed, PRETRAINED_VAE_WIDTHS, PRETRAINED_VAE_GROUPS, PRETRAINED_TRANSFORMER_CONFIG
        )
        report = pretrain(pipe, samples_dir, plan)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.eval()
    with atomic_dir(Path(out_dir)) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return report
