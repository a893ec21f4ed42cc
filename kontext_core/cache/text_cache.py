"""T5 sequence embeddings and CLIP pooled embeddings of each caption."""

from __future__ import annotations

import torch
from diffusers import FluxKontextPipeline

# FLUX.1 Kontext [dev] reads 512 T5 tokens.
MAX_SEQUENCE_LENGTH = 512


@torch.no_grad()
def encode_caption(pipe: FluxKontextPipeline, caption: str) -> dict[str, torch.Tensor]:
    prompt_embeds, pooled, _ = pipe.encode_prompt(
        prompt=caption,
        prompt_2=caption,
        device=pipe.text_encoder.device,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    return {"prompt_embeds": prompt_embeds[0].float(), "pooled_prompt_embeds": pooled[0].float()}


@torch.no_grad()
def encode_captions(pipe: FluxKontextPipeline, captions: list[str]) -> list[dict[str, torch.Tensor]]:
    """`encode_caption` of each caption, in one encoder call per text encoder."""
    prompt_embeds, pooled, _ = pipe.encode_prompt(
        prompt=captions,
        prompt_2=captions,
        device=pipe.text_encoder.device,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    return [
        {"prompt_embeds": prompt_embeds[i].float(), "pooled_prompt_embeds": pooled[i].float()}
        for i in range(len(captions))
    ]
