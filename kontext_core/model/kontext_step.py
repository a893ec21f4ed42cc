"""The FLUX.1 Kontext flow-matching training step.

Latents are packed into 2x2 patches; target tokens get position ids (0, row, col) and reference
tokens (1, row, col), several references being offset so they do not overlap. The transformer sees
`cat([noisy_target, references])`; its prediction is sliced back to the target tokens and the loss
(velocity `noise - x0`) is computed on those alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kontext_core.config import Params

# diffusers' FluxKontextPipeline `calculate_shift` defaults (the scheduler config of FLUX.1 dev).
BASE_SEQ_LEN, MAX_SEQ_LEN, BASE_SHIFT, MAX_SHIFT = 256, 4096, 0.5, 1.15


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C), the 2x2 patch sequence the transformer reads."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack_latents` for a latent grid of `height` x `width`."""
    b, _, packed_c = tokens.shape
    c = packed_c // 4
    x = tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def position_ids(h: int, w: int, index: int, row_offset: int = 0, col_offset: int = 0) -> torch.Tensor:
    """Ids (index, row, col) for a packed grid of h x w tokens."""
    ids = torch.zeros(h, w, 3)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(h)[:, None] + row_offset
    ids[..., 2] = torch.arange(w)[None, :] + col_offset
    return ids.reshape(h * w, 3)


def reference_ids(shapes: list[tuple[int, int]]) -> torch.Tensor:
    """Ids for several references placed side by side (column offsets), all with index 1."""
    parts, col = [torch.zeros(0, 3)], 0
    for h, w in shapes:
        parts.append(position_ids(h, w, index=1, col_offset=col))
        col += w
    return torch.cat(parts, dim=0)


# ----------------------------------------------------------------------------------------------
# timesteps, guidance, loss


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def resolution_shift(image_seq_len: int) -> float:
    """The resolution-dependent shift exp(mu) FLUX uses at inference: 1.65 at 256 tokens, 3.16 at 4096."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    mu = BASE_SHIFT + slope * (image_seq_len - BASE_SEQ_LEN)
    return math.exp(mu)


def sample_sigmas(batch: int, params: Params, image_seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """Training sigmas: logit-normal `sigmoid(scale * N(0,1))` or uniform, then the static or auto shift."""
    if params.flow_use_uniform_schedule:
        sigmas = torch.rand(batch, generator=generator)
    else:
        sigmas = torch.sigmoid(params.flow_sigmoid_scale * torch.randn(batch, generator=generator))
    shift = resolution_shift(image_seq_len) if params.flow_schedule_auto_shift else params.flow_schedule_shift
    return shift_sigmas(sigmas, shift)


def sample_guidance(batch: int, params: Params, generator: torch.Generator) -> torch.Tensor:
    """The guidance embedding value per sample: constant (1.0 for Kontext-dev) or uniform in [min, max]."""
    if params.flux_guidance_mode == "constant":
        return torch.full((batch,), float(params.flux_guidance_value))
    low, high = params.flux_guidance_min, params.flux_guidance_max
    return low + (high - low) * torch.rand(batch, generator=generator)


def flow_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str = "mse", huber_c: float = 0.1):
    """Mean loss over all elements; huber / smooth_l1 are the pseudo-Huber forms (smooth everywhere)."""
    prediction, target = prediction.float(), target.float()
    if loss_type == "mse":
        return F.mse_loss(prediction, target)
    root = torch.sqrt((prediction - target) ** 2 + huber_c**2) - huber_c
    if loss_type == "huber":
        return (2 * huber_c * root).mean()
    if loss_type == "smooth_l1":
        return (2 * root).mean()
    raise ValueError(f"loss_type = {loss_type!r}: expected mse, huber or smooth_l1")


# ----------------------------------------------------------------------------------------------
# the step


@dataclass
class StepInputs:
    target_latents: torch.Tensor  # (B, 16, H, W), already normalised with the VAE shift/scale
    reference_latents: list[torch.Tensor]  # each (B, 16, h, w)
    prompt_embeds: torch.Tensor  # (B, T, D)
    pooled_prompt_embeds: torch.Tensor  # (B, D_pooled)


@dataclass
class StepOutputs:
    loss: torch.Tensor
    prediction: torch.Tensor  # target tokens only
    target: torch.Tensor


def kontext_step(
    transformer: torch.nn.Module,
    inputs: StepInputs,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    guidance: float | torch.Tensor = 1.0,
    loss_type: str = "mse",
    huber_c: float = 0.1,
    target: torch.Tensor | None = None,
) -> StepOutputs:
    """One flow-matching step; `target` (packed target tokens) replaces the flow target `noise - x0`."""
    x0 = inputs.target_latents
    b, _, h, w = x0.shape
    sig = sigmas.view(b, 1, 1, 1).to(x0.dtype)
    noisy = (1 - sig) * x0 + sig * noise
    target_tokens = pack_latents(noisy)
    ref_tokens = [pack_latents(r) for r in inputs.reference_latents]
    hidden = torch.cat([target_tokens, *ref_tokens], dim=1)
    img_ids = torch.cat(
        [
            position_ids(h // 2, w // 2, index=0),
            reference_ids([(r.shape[2] // 2, r.shape[3] // 2) for r in inputs.reference_latents]),
        ],
        dim=0,
    ).to(x0.device, x0.dtype)
    txt_ids = torch.zeros(inputs.prompt_embeds.shape[1], 3, device=x0.device, dtype=x0.dtype)
    if isinstance(guidance, torch.Tensor):
        guidance_vec = guidance.to(x0.device, torch.float32)
    else:
        guidance_vec = torch.full((b,), float(guidance), device=x0.device, dtype=torch.float32)
    out = transformer(
        hidden_states=hidden,
        encoder_hidden_states=inputs.prompt_embeds,
        pooled_projections=inputs.pooled_prompt_embeds,
        timestep=sigmas.to(x0.dtype),
        img_ids=img_ids,
        txt_ids=txt_ids,
        guidance=guidance_vec,
        return_dict=False,
    )[0]
    prediction = out[:, : target_tokens.shape[1]]
    if target is None:
        target = pack_latents(noise - x0)
    loss = flow_loss(prediction, target, loss_type, huber_c)
    return StepOutputs(loss=loss, prediction=prediction, target=target)
