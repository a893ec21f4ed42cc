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


def tokenize_captions(
    pipe: FluxKontextPipeline, captions: list[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP and T5 input ids of the captions, made exactly as `encode_prompt` makes them (padded to
    the full length, cut beyond it). One tokenizer call per list: `encode_prompt` tokenizes every
    batch four times over, and at short T5 lengths that cost more than the encoders."""
    common = {"padding": "max_length", "truncation": True, "return_length": False, "return_tensors": "pt"}
    clip = pipe.tokenizer(captions, max_length=pipe.tokenizer_max_length, return_overflowing_tokens=False, **common)
    t5 = pipe.tokenizer_2(captions, max_length=max_sequence_length, return_overflowing_tokens=False, **common)
    return clip.input_ids, t5.input_ids


def cut_captions(
    pipe: FluxKontextPipeline, captions: list[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH
) -> dict[str, list[str]]:
    """The captions each text encoder cuts short ("clip": over its 77 tokens, "t5": over
    `max_sequence_length`), as one report instead of `encode_prompt`'s warning per batch."""
    lengths = {
        "clip": (pipe.tokenizer, pipe.tokenizer_max_length),
        "t5": (pipe.tokenizer_2, max_sequence_length),
    }
    cut: dict[str, list[str]] = {}
    for name, (tokenizer, limit) in lengths.items():
        ids = tokenizer(captions, padding=False, truncation=False, verbose=False).input_ids
        cut[name] = [caption for caption, row in zip(captions, ids, strict=True) if len(row) > limit]
    return cut


@torch.no_grad()
def encode_token_ids(
    pipe: FluxKontextPipeline, clip_ids: torch.Tensor, t5_ids: torch.Tensor
) -> list[dict[str, torch.Tensor]]:
    """The embeddings `encode_prompt` returns for these token ids (`tokenize_captions`), row by row:
    CLIP's pooled output and T5's last hidden state, in each encoder's dtype, then float32. Bit-
    identical to `encode_prompt` on the same batch of captions (tests/integration/test_cache_batching.py)."""
    clip, t5 = pipe.text_encoder, pipe.text_encoder_2
    pooled = clip(clip_ids.to(clip.device), output_hidden_states=False).pooler_output.to(dtype=clip.dtype)
    embeds = t5(t5_ids.to(t5.device), output_hidden_states=False)[0].to(dtype=t5.dtype)
    return [
        {"prompt_embeds": embeds[i].float(), "pooled_prompt_embeds": pooled[i].float()}
        for i in range(clip_ids.shape[0])
    ]


@torch.no_grad()
def encode_captions(
    pipe: FluxKontextPipeline, captions: list[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH
) -> list[dict[str, torch.Tensor]]:
    """`encode_caption` of each caption, in one encoder call per text encoder."""
    return encode_token_ids(pipe, *tokenize_captions(pipe, captions, max_sequence_length))
