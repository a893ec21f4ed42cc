"""VAE latents of every target and reference image, per bucket, normalised as Kontext expects."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) in [-1, 1]."""
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


@torch.no_grad()
def encode_pixels(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 16, H/8, W/8) latents of a (B, 3, H, W) batch in [-1, 1]: the mode, then (z - shift) * scale."""
    latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    return ((latents - vae.config.shift_factor) * vae.config.scaling_factor).float()


def encode_image(vae: AutoencoderKL, img: Image.Image) -> torch.Tensor:
    """(16, H/8, W/8) latents of one image."""
    return encode_pixels(vae, image_to_tensor(img))[0]
