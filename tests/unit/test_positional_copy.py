"""The pretrained tiny transformer's starting lookup: each target token attends to the reference
token at its own place, computed through the model's own projections, norms and rotary embedding."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.embeddings import apply_rotary_emb

from kontext_core.model.kontext_step import position_ids, reference_ids
from kontext_core.train.pretrain_edit import positional_copy_init
from kontext_core.train.pretrain_tiny import PRETRAINED_TRANSFORMER_CONFIG

TEXT_TOKENS = 32


def _first_block_attention(transformer: FluxTransformer2DModel, rows: int, cols: int) -> torch.Tensor:
    """Softmax weights (queries x keys, text first) of the first block, on random token contents."""
    torch.manual_seed(0)
    attn = transformer.transformer_blocks[0].attn
    head = attn.head_dim
    ids = torch.cat([torch.zeros(TEXT_TOKENS, 3), position_ids(rows, cols, 0), reference_ids([(rows, cols)])])
    rotary = transformer.pos_embed(ids)
    image = torch.randn(1, 2 * rows * cols, attn.query_dim)
    text = torch.randn(1, TEXT_TOKENS, attn.query_dim)

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, head))

    query = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(text))), attn.norm_q(heads(attn.to_q(image)))], 1)
    key = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(text))), attn.norm_k(heads(attn.to_k(image)))], 1)
    query = apply_rotary_emb(query, rotary, sequence_dim=1)
    key = apply_rotary_emb(key, rotary, sequence_dim=1)
    scores = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head)
    return scores.softmax(-1)[0, 0]


@pytest.mark.parametrize("rows, cols", [(8, 8), (4, 6), (16, 16)])
@torch.no_grad()
def test_each_target_token_reads_its_own_reference_token(rows, cols):
    transformer = FluxTransformer2DModel(**PRETRAINED_TRANSFORMER_CONFIG)
    before = _first_block_attention(transformer, rows, cols)
    positional_copy_init(transformer)
    weights = _first_block_attention(transformer, rows, cols)
    n = rows * cols
    targets = torch.arange(TEXT_TOKENS, TEXT_TOKENS + n)
    own_reference = weights[targets, targets + n]
    assert own_reference.min() > 0.99, own_reference.min()
    assert weights[targets, :TEXT_TOKENS].sum(-1).max() < 1e-3  # the text gets no share of the lookup
    # A random start spreads attention: the lookup is the initialisation's doing.
    assert before[targets, targets + n].max() < 0.5
