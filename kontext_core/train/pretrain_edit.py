"""Teach the tiny transformer the identity edit: whatever the caption, the output is the reference.

A pretrained Kontext model returns a faithful copy of its reference when the prompt asks for
nothing it knows; that is the base a LoRA then bends towards one edit. The step is the pipeline's
own (`kontext_step`: packed latents, reference ids (1, r, c), loss on the target tokens), with the
target equal to the reference. Captions are drawn independently of the pictures, so the copy does
not depend on what the text says, and guidance spans the range validation uses (2.5 by default).

Copying needs attention that is sharp at one place: each target token must read the reference token
at its own (row, col), and nothing else. Gradient descent finds that slowly from a random start (a
few hundred CPU steps left the earlier tiny model near 12 dB), so the first block's attention starts
as that lookup, written in closed form from the rotary embedding (`positional_copy_init`); training
then teaches the values, the timestep scaling and the rest of the network, attention included.
"""

from __future__ import annotations

import logging
import math

import torch
from diffusers import FluxKontextPipeline, FluxTransformer2DModel

from kontext_core.cache.text_cache import encode_caption
from kontext_core.lifecycle import check_stop
from kontext_core.model.kontext_step import StepInputs, kontext_step
from kontext_core.progress import track

log = logging.getLogger(__name__)

BATCH = 4
GUIDANCE_RANGE = (1.0, 4.0)
# FluxPosEmbed's rotary base (fixed in diffusers' FluxTransformer2DModel).
ROPE_THETA = 10000.0
# Rotary pairs slower than this barely turn across a few dozen tokens; they would only add a constant.
MIN_LOOKUP_FREQUENCY = 0.15
# Scale of the lookup's queries and keys (the RMSNorm weights): 4 puts >99 % of each target token's
# attention on its own reference token on the tiny model's grids.
LOOKUP_SHARPNESS = 4.0


def _rotary_frequencies(dim: int) -> list[float]:
    return [ROPE_THETA ** (-2 * j / dim) for j in range(dim // 2)]


@torch.no_grad()
def positional_copy_init(transformer: FluxTransformer2DModel, sharpness: float = LOOKUP_SHARPNESS) -> None:
    """Set the first double block's image queries and keys to a positional lookup: a target token at
    (0, r, c) attends to the reference token at (1, r, c).

    Queries and keys become constant vectors (zero weights, a bias), so each score is a sum of
    cosines of the position differences: the row and column pairs peak where the positions agree, and
    the index pair's key is turned by one step so that it peaks at index + 1 (the reference) rather
    than at the token itself. Text keys start at zero, so the text gets no share of the lookup.
    """
    axes = transformer.config.axes_dims_rope
    attn = transformer.transformer_blocks[0].attn
    query, key = torch.zeros(attn.head_dim), torch.zeros(attn.head_dim)
    offset = 0
    for axis, dim in enumerate(axes):
        for pair, frequency in enumerate(_rotary_frequencies(dim)):
            at = offset + 2 * pair
            if axis == 0 and pair == 0:
                query[at] = 1.0
                key[at], key[at + 1] = math.cos(frequency), -math.sin(frequency)
            elif axis > 0 and frequency >= MIN_LOOKUP_FREQUENCY:
                query[at] = key[at] = 1.0
        offset += dim
    for projection, vector in ((attn.to_q, query), (attn.to_k, key)):
        projection.weight.zero_()
        projection.bias.copy_(vector.repeat(attn.heads))
    attn.norm_q.weight.fill_(sharpness)
    attn.norm_k.weight.fill_(sharpness)
    attn.add_k_proj.weight.zero_()
    attn.add_k_proj.bias.zero_()


def caption_embeddings(
    pipe: FluxKontextPipeline, captions: list[str], max_sequence_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 sequence embeds, CLIP pooled embeds) of each distinct caption and the empty one, sorted."""
    distinct = sorted(set(captions) | {""})
    encoded = [encode_caption(pipe, caption, max_sequence_length) for caption in distinct]
    return (
        torch.stack([e["prompt_embeds"] for e in encoded]),
        torch.stack([e["pooled_prompt_embeds"] for e in encoded]),
    )


def train_identity(
    transformer: FluxTransformer2DModel,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled_embeds: torch.Tensor,
    steps: int,
    learning_rate: float,
    generator: torch.Generator,
) -> list[float]:
    """Flow-matching training with target = reference on normalised `latents` (N, 16, h, w)."""
    transformer.train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    low, high = GUIDANCE_RANGE
    losses = []
    for step in track(range(steps), "pretrain transformer", unit="step"):
        check_stop(f"pretrain transformer step {step + 1} of {steps}")
        pictures = latents[torch.randint(0, len(latents), (BATCH,), generator=generator)]
        texts = torch.randint(0, len(prompt_embeds), (BATCH,), generator=generator)
        noise = torch.randn(pictures.shape, generator=generator)
        sigmas = torch.rand(BATCH, generator=generator)
        guidance = low + (high - low) * torch.rand(BATCH, generator=generator)
        inputs = StepInputs(
            target_latents=pictures,
            reference_latents=[pictures],
            prompt_embeds=prompt_embeds[texts],
            pooled_prompt_embeds=pooled_embeds[texts],
        )
        loss = kontext_step(transformer, inputs, noise, sigmas, guidance).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    transformer.eval()
    return losses
