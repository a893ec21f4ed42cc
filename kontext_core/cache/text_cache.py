"""T5 sequence embeddings and CLIP pooled embeddings of each caption."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FluxKontextPipeline

# FLUX.1 Kontext [dev] reads 512 T5 tokens.
MAX_SEQUENCE_LENGTH = 512


def sequence_length(params: Any | None) -> int:
    """T5 tokens per caption: `tokenizer_max_length`, or the model's 512 when unset."""
    value = getattr(params, "tokenizer_max_length", None) if params is not None else None
    return int(value) if value else MAX_SEQUENCE_LENGTH


@torch.no_grad()
def encode_caption(
    pipe: FluxKontextPipeline, caption: str, max_sequence_length: int = MAX_SEQUENCE_LENGTH
) -> dict[str, torch.Tensor]:
    prompt_embeds, pooled, _ = pipe.encode_prompt(
        prompt=caption,
        prompt_2=caption,
        device=pipe.text_encoder.device,
        max_sequence_length=max_sequence_length,
    )
    return {"prompt_embeds": prompt_embeds[0].float(), "pooled_prompt_embeds": pooled[0].float()}


@torch.no_grad()
def encode_captions(
    pipe: FluxKontextPipeline, captions: list[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH
) -> list[dict[str, torch.Tensor]]:
    """`encode_caption` of each caption, in one encoder call per text encoder."""
    prompt_embeds, pooled, _ = pipe.encode_prompt(
        prompt=captions,
        prompt_2=captions,
        device=pipe.text_encoder.device,
        max_sequence_length=max_sequence_length,
    )
    return [
        {"prompt_embeds": prompt_embeds[i].float(), "pooled_prompt_embeds": pooled[i].float()}
        for i in range(len(captions))
    ]
