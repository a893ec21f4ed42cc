"""Build a randomly initialised FLUX.1 Kontext pipeline with the real geometry, small widths.

Saved with `save_pretrained`, it loads through the same `from_pretrained` path as
`black-forest-labs/FLUX.1-Kontext-dev`: VAE downsampling 8 with 16 latent channels, 2x2 packing
(transformer `in_channels` 64), rope axes summing to the head dim, guidance embeddings on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from kontext_core.fsutil import atomic_dir
from kontext_core.model.tokenizers_offline import build_clip_tokenizer, build_t5_tokenizer

log = logging.getLogger(__name__)

# FLUX.1's VAE normalisation constants; kept so latent statistics follow the real model.
FLUX_VAE_SHIFT = 0.1159
FLUX_VAE_SCALE = 0.3611

CLIP_HIDDEN = 32
T5_D_MODEL = 32

# FluxTransformer2DModel arguments: the real model's geometry with small widths and depths.
TINY_TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=1,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=T5_D_MODEL,
    pooled_projection_dim=CLIP_HIDDEN,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)


# The VAE's widths and GroupNorm groups. The default keeps the known-good tiny config (fast to
# build for unit tests); pretraining uses a wider VAE with groups of several channels, because
# one-channel groups normalise away each picture's colours and the VAE cannot learn to keep them.
TINY_VAE_WIDTHS = (8, 8, 8, 8)
TINY_VAE_GROUPS = 8


def build_tiny_pipeline(
    seed: int = 0,
    vae_widths: tuple[int, ...] = TINY_VAE_WIDTHS,
    vae_groups: int = TINY_VAE_GROUPS,
    transformer_config: dict | None = None,
) -> FluxKontextPipeline:
    """The tiny pipeline; the VAE downsamples by 2 ** (len(vae_widths) - 1) (8 for the default four)."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_t5_tokenizer()
    transformer = FluxTransformer2DModel(**(transformer_config or TINY_TRANSFORMER_CONFIG))
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(vae_widths),
        up_block_types=("UpDecoderBlock2D",) * len(vae_widths),
        block_out_channels=tuple(vae_widths),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=vae_groups,
        sample_size=64,
        shift_factor=FLUX_VAE_SHIFT,
        scaling_factor=FLUX_VAE_SCALE,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=max(1000, len(tokenizer)),
            hidden_size=CLIP_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=CLIP_HIDDEN,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=max(1000, len(tokenizer_2)),
            d_model=T5_D_MODEL,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    # Config-built models start in train mode (dropout on): frozen parts must be deterministic.
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()
    return FluxKontextPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def save_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build and save the tiny pipeline atomically; returns the model directory."""
    out_dir = Path(out_dir)
    pipe = build_tiny_pipeline(seed)
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    log.info("tiny FLUX.1 Kontext pipeline saved to %s", out_dir)
    return out_dir
