"""FLUX.1 Kontext [dev]'s repository as the hub serves it, with random weights and fewer blocks.

Every file the hub repository `black-forest-labs/FLUX.1-Kontext-dev` has for diffusers is written
under the same name: `model_index.json`, `scheduler/`, `text_encoder/` (CLIP-L), `text_encoder_2/`
(T5-XXL, sharded with `model.safetensors.index.json`), `tokenizer/`, `tokenizer_2/`,
`transformer/` (sharded with `diffusion_pytorch_model.safetensors.index.json`) and `vae/`.

Two widths:
- `real`: every config value of the real model except the number of transformer blocks and T5
  layers, for benches that measure memory and time per block and extrapolate;
- `small`: the widths of kontext_core.model.tiny (same layout, same sharding), for tests.

Weights are bf16, drawn per tensor from (seed, component, tensor name) on modules built on the meta
device (kontext_core.model.replica_weights), so a real-width replica is written in bounded memory
and the bytes are the same for the same arguments in any process.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch

from kontext_core.fsutil import atomic_dir
from kontext_core.model.replica_weights import write_weights
from kontext_core.model.tiny import TINY_TRANSFORMER_CONFIG

log = logging.getLogger(__name__)

Width = Literal["real", "small"]
WIDTHS: tuple[str, ...] = ("real", "small")
REPO_ID = "black-forest-labs/FLUX.1-Kontext-dev"

# Shard limits: the hub's own (10 GB transformer, 5 GB T5) would give a replica one shard, so the
# defaults are scaled down until a 1 + 2 block replica has several, as the full model has.
DEFAULT_MAX_SHARD_BYTES: dict[str, int] = {"real": 512 << 20, "small": 48 << 10}

# FLUX.1 Kontext [dev] transformer/config.json, less the block counts.
REAL_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    out_channels=None,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
# The small width is the tiny model's (kontext_core.model.tiny), in the real model's layout.
_WIDTH_KEYS = (
    "attention_head_dim", "num_attention_heads", "joint_attention_dim", "pooled_projection_dim", "axes_dims_rope",
)  # fmt: skip
SMALL_TRANSFORMER = dict(REAL_TRANSFORMER, **{key: TINY_TRANSFORMER_CONFIG[key] for key in _WIDTH_KEYS})

# FLUX.1's vae/config.json.
REAL_VAE = dict(
    act_fn="silu",
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    force_upcast=True,
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    latents_mean=None,
    latents_std=None,
    layers_per_block=2,
    mid_block_add_attention=True,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
SMALL_VAE = dict(REAL_VAE, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=8, sample_size=64)

# CLIP-L's text config (text_encoder/config.json); its ids are the real vocabulary's, and the
# legacy eos id 2 makes CLIPTextModel pool at the highest token id, which the offline tokenizer's
# `<|endoftext|>` also is.
REAL_CLIP = dict(
    attention_dropout=0.0,
    bos_token_id=0,
    dropout=0.0,
    eos_token_id=2,
    hidden_act="quick_gelu",
    hidden_size=768,
    initializer_factor=1.0,
    initializer_range=0.02,
    intermediate_size=3072,
    layer_norm_eps=1e-05,
    max_position_embeddings=77,
    num_attention_heads=12,
    num_hidden_layers=12,
    pad_token_id=1,
    projection_dim=768,
    vocab_size=49408,
)
SMALL_CLIP = dict(
    REAL_CLIP,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=2,
    num_hidden_layers=2,
    projection_dim=32,
    vocab_size=1000,
)

# T5-XXL v1.1 (text_encoder_2/config.json), less the layer count.
REAL_T5 = dict(
    classifier_dropout=0.0,
    d_ff=10240,
    d_kv=64,
    d_model=4096,
    decoder_start_token_id=0,
    dense_act_fn="gelu_new",
    dropout_rate=0.1,
    eos_token_id=1,
    feed_forward_proj="gated-gelu",
    initializer_factor=1.0,
    is_encoder_decoder=True,
    is_gated_act=True,
    layer_norm_epsilon=1e-06,
    num_heads=64,
    output_past=True,
    pad_token_id=0,
    relative_attention_max_distance=128,
    relative_attention_num_buckets=32,
    tie_word_embeddings=False,
    use_cache=True,
    vocab_size=32128,
)
SMALL_T5 = dict(REAL_T5, d_ff=64, d_kv=8, d_model=32, num_heads=4, relative_attention_num_buckets=8, vocab_size=1000)

# scheduler/scheduler_config.json of FLUX.1 [dev] and Kontext [dev].
SCHEDULER = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
)

WIDTH_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "real": {"transformer": REAL_TRANSFORMER, "vae": REAL_VAE, "clip": REAL_CLIP, "t5": REAL_T5},
    "small": {"transformer": SMALL_TRANSFORMER, "vae": SMALL_VAE, "clip": SMALL_CLIP, "t5": SMALL_T5},
}


def _model_index() -> dict[str, Any]:
    import diffusers

    return {
        "_class_name": "FluxKontextPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def transformer_config(width: Width = "small", double_blocks: int = 1, single_blocks: int = 2) -> dict[str, Any]:
    """FluxTransformer2DModel's arguments for a replica (the real config but for the block counts)."""
    return dict(WIDTH_CONFIGS[width]["transformer"], num_layers=double_blocks, num_single_layers=single_blocks)


def _diffusers_component(
    folder: Path, model: Any, *, seed: int, component: str, sharded: bool, max_shard_bytes: int
) -> None:
    folder.mkdir(parents=True)
    model.save_config(folder)
    write_weights(
        folder,
        model,
        seed=seed,
        component=component,
        weights_name="diffusion_pytorch_model.safetensors",
        sharded=sharded,
        max_shard_bytes=max_shard_bytes,
    )


def _transformers_component(
    folder: Path, model: Any, config: Any, *, seed: int, component: str, sharded: bool, max_shard_bytes: int
) -> None:
    """`config` is saved as given (the hub's file), not as the model class rewrote it on init."""
    folder.mkdir(parents=True)
    config.architectures = [type(model).__name__]
    config.dtype = "bfloat16"
    config.save_pretrained(folder)
    write_weights(
        folder,
        model,
        seed=seed,
        component=component,
        weights_name="model.safetensors",
        sharded=sharded,
        max_shard_bytes=max_shard_bytes,
    )


def _check_counts(double_blocks: int, single_blocks: int, t5_layers: int, width: str) -> None:
    if width not in WIDTHS:
        raise ValueError(f"replica width: {width!r} is not one of {', '.join(WIDTHS)}")
    for key, value, least in (
        ("double_blocks", double_blocks, 0),
        ("single_blocks", single_blocks, 0),
        ("t5_layers", t5_layers, 1),
    ):
        if value < least:
            raise ValueError(f"replica {key}: {value} (must be >= {least})")
    if double_blocks + single_blocks < 1:
        raise ValueError("replica double_blocks + single_blocks: 0 (the transformer needs at least one block)")


def _write_into(
    root: Path, *, width: Width, double_blocks: int, single_blocks: int, t5_layers: int, seed: int, max_shard_bytes: int
) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from kontext_core.model.tokenizers_offline import build_clip_tokenizer, build_t5_tokenizer

    configs = WIDTH_CONFIGS[width]
    _write_json(root / "model_index.json", _model_index())
    FlowMatchEulerDiscreteScheduler(**SCHEDULER).save_config(root / "scheduler")
    build_clip_tokenizer().save_pretrained(root / "tokenizer")
    build_t5_tokenizer().save_pretrained(root / "tokenizer_2")
    shard = {"seed": seed, "max_shard_bytes": max_shard_bytes}
    # Modules on the meta device: names and shapes only; the weights are drawn tensor by tensor.
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**transformer_config(width, double_blocks, single_blocks))
        vae = AutoencoderKL(**configs["vae"])
        clip = CLIPTextModel(CLIPTextConfig(**configs["clip"]))
        t5 = T5EncoderModel(T5Config(**configs["t5"], num_layers=t5_layers, num_decoder_layers=t5_layers))
    clip_config = CLIPTextConfig(**configs["clip"])
    t5_config = T5Config(**configs["t5"], num_layers=t5_layers, num_decoder_layers=t5_layers)
    _diffusers_component(root / "transformer", transformer, component="transformer", sharded=True, **shard)
    _diffusers_component(root / "vae", vae, component="vae", sharded=False, **shard)
    _transformers_component(root / "text_encoder", clip, clip_config, component="text_encoder", sharded=False, **shard)
    _transformers_component(root / "text_encoder_2", t5, t5_config, component="text_encoder_2", sharded=True, **shard)


def write_replica(
    out_dir: Path,
    *,
    width: Width = "small",
    double_blocks: int = 1,
    single_blocks: int = 2,
    t5_layers: int = 1,
    seed: int = 0,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write the replica repository into `out_dir` atomically (replacing it); returns `out_dir`.

    The same arguments give the same bytes in every file.
    """
    _check_counts(double_blocks, single_blocks, t5_layers, width)
    limit = max_shard_bytes if max_shard_bytes is not None else DEFAULT_MAX_SHARD_BYTES[width]
    if limit < 1:
        raise ValueError(f"replica max_shard_bytes: {limit} (must be >= 1)")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        _write_into(
            Path(tmp),
            width=width,
            double_blocks=double_blocks,
            single_blocks=single_blocks,
            t5_layers=t5_layers,
            seed=seed,
            max_shard_bytes=limit,
        )
    log.info(
        "FLUX.1 Kontext [dev] replica (%s width, %d+%d blocks) written to %s",
        width,
        double_blocks,
        single_blocks,
        out_dir,
    )
    return out_dir


def write_hub_cache(
    hf_home: Path,
    repo_id: str = REPO_ID,
    *,
    width: Width = "small",
    double_blocks: int = 1,
    single_blocks: int = 2,
    t5_layers: int = 1,
    seed: int = 0,
    max_shard_bytes: int | None = None,
    ref: str | None = "main",
    message: str = "",
) -> str:
    """Write the replica into `<hf_home>/hub` as a download of `repo_id` would; returns the commit.

    The snapshot's commit id follows from its bytes and `message`; `ref` (a branch or tag; None
    for none) is pointed at it, so writing a second replica (another seed) moves `refs/main`.
    """
    import tempfile

    from kontext_core.hub.cache import hub_cache_dir, write_snapshot

    hub_cache = hub_cache_dir(hf_home)
    hub_cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".replica-", dir=hub_cache) as tmp:
        folder = write_replica(
            Path(tmp) / "repo",
            width=width,
            double_blocks=double_blocks,
            single_blocks=single_blocks,
            t5_layers=t5_layers,
            seed=seed,
            max_shard_bytes=max_shard_bytes,
        )
        commit = write_snapshot(hub_cache, repo_id, folder, repo_type="model", ref=ref, message=message)
    log.info("replica of %s cached under %s at commit %s", repo_id, hub_cache, commit)
    return commit
