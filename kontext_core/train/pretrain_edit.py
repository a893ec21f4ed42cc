"""Teach the tiny transformer the identity edit: whatever the caption, the output is the reference.

A pretrained Kontext model returns a faithful copy of its reference when the prompt asks for
nothing it knows; that is the base a LoRA then bends towards one edit. The step is the pipeline's
own (`kontext_step`: packed latents, reference ids (1, r, c), loss on the target tokens), with the
target equal to the reference. Captions are drawn independently of the pictures, so the copy does
not depend on what the text says, and guidance spans the range validation uses (2.5 by default).
"""

from __future__ import annotations

import logging

import torch
from diffusers import FluxKontextPipeline, FluxTransformer2DModel

from kontext_core.cache.text_cache import encode_caption
from kontext_core.model.kontext_step import StepInputs, kontext_step
from kontext_core.progress import track

log = logging.getLogger(__name__)

BATCH = 4
GUIDANCE_RANGE = (1.0, 4.0)


def caption_embeddings(pipe: FluxKontextPipeline, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 sequence embeds, CLIP pooled embeds) of each distinct caption and the empty one, sorted."""
    distinct = sorted(set(captions) | {""})
    encoded = [encode_caption(pipe, caption) for caption in distinct]
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
    for _ in track(range(steps), "pretrain transformer", unit="step"):
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
