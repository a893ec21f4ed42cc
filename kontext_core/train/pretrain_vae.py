"""Teach the tiny VAE to reconstruct the sample pictures, with FLUX.1's latent normalisation.

The latents are pulled towards what the real VAE's `(z - shift_factor) * scaling_factor` gives:
zero mean, unit spread. Flow matching mixes latents with unit Gaussian noise, so a VAE whose latents
had another scale would make every noise level mean something else than on the real model.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from kontext_core.lifecycle import check_stop
from kontext_core.progress import track

log = logging.getLogger(__name__)

BATCH = 8
# The VAE is convolutional: 32-pixel crops teach it as well as whole pictures, at a quarter of the cost.
CROP = 32
# Small next to the reconstruction error, enough to hold the normalised latents near N(0, 1).
STATS_WEIGHT = 0.01
# Decoding slightly perturbed latents makes the decoder forgiving of a transformer's imperfect output.
LATENT_NOISE = 0.05


def normalised(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    z = vae.encode(pixels).latent_dist.mode()
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def denormalised(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    return latents / vae.config.scaling_factor + vae.config.shift_factor


def _crops(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random CROP x CROP window per picture, on the 8-pixel grid of the latents."""
    cells = (batch.shape[-1] - CROP) // 8 + 1
    windows = []
    for picture in batch:
        top, left = (8 * int(v) for v in torch.randint(0, cells, (2,), generator=generator))
        windows.append(picture[:, top : top + CROP, left : left + CROP])
    return torch.stack(windows)


def train_vae(
    vae: AutoencoderKL, pixels: torch.Tensor, steps: int, learning_rate: float, generator: torch.Generator
) -> list[float]:
    """Reconstruction training on `pixels` (N, 3, H, W) in [-1, 1]; returns the loss per step."""
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    losses = []
    for step in track(range(steps), "pretrain vae", unit="step"):
        check_stop(f"pretrain vae step {step + 1} of {steps}")
        batch = _crops(pixels[torch.randint(0, len(pixels), (BATCH,), generator=generator)], generator)
        latents = normalised(vae, batch)
        noise = LATENT_NOISE * torch.randn(latents.shape, generator=generator)
        reconstruction = vae.decode(denormalised(vae, latents + noise)).sample
        stats = latents.mean() ** 2 + (latents.std() - 1) ** 2
        loss = F.mse_loss(reconstruction, batch) + 0.1 * F.l1_loss(reconstruction, batch) + STATS_WEIGHT * stats
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.eval()
    return losses


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, pixels: torch.Tensor) -> float:
    """Mean PSNR in dB of encode -> decode over 8-bit pictures, as the pipeline rounds its outputs."""
    latents = normalised(vae, pixels)
    decoded = vae.decode(denormalised(vae, latents)).sample
    as_bytes = ((decoded.clamp(-1, 1) + 1) * 127.5).round()
    original = ((pixels + 1) * 127.5).round()
    mse = ((as_bytes - original) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return float(torch.mean(10 * torch.log10(255.0**2 / mse)))


@torch.no_grad()
def latent_stats(vae: AutoencoderKL, pixels: torch.Tensor) -> dict[str, float]:
    latents = normalised(vae, pixels)
    std = float(latents.std())
    return {"mean": float(latents.mean()), "std": std if math.isfinite(std) else 0.0}
