"""Load the base model by hub id or local directory, through the same `from_pretrained` calls.

A hub id is loaded from the snapshot folder its revision resolves to in the cache (the same files
`from_pretrained(hub_id)` would read; diffusers' sharded-model path would otherwise ask the hub for
the file list even with HF_HUB_OFFLINE=1), or by id pinned to that commit when only the hub has it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FluxKontextPipeline, FluxTransformer2DModel

from kontext_core.config import Params
from kontext_core.model.build_lock import building
from kontext_core.model.source import model_location

log = logging.getLogger(__name__)


def training_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def base_dtype(params: Params, device: torch.device | None = None) -> torch.dtype:
    """The frozen base's dtype (kontext_core.model.precision): bf16 only on an accelerator."""
    from kontext_core.model.precision import base_dtype_name

    return getattr(torch, base_dtype_name(params, (device or training_device()).type))


@building
def load_transformer(params: Params, workdir: Path, dtype: torch.dtype = torch.float32) -> FluxTransformer2DModel:
    where = model_location(params, workdir)
    model = FluxTransformer2DModel.from_pretrained(
        where.source, subfolder="transformer", torch_dtype=dtype, revision=where.revision
    )
    return model.eval()


@building
def load_vae(params: Params, workdir: Path, dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    where = model_location(params, workdir)
    return AutoencoderKL.from_pretrained(
        where.source, subfolder="vae", torch_dtype=dtype, revision=where.revision
    ).eval()


@building
def load_text_pipeline(params: Params, workdir: Path, dtype: torch.dtype = torch.float32) -> FluxKontextPipeline:
    """The pipeline with only tokenizers and text encoders, for caching text embeddings."""
    where = model_location(params, workdir)
    pipe = FluxKontextPipeline.from_pretrained(
        where.source, transformer=None, vae=None, torch_dtype=dtype, revision=where.revision
    )
    for module in (pipe.text_encoder, pipe.text_encoder_2):
        module.eval().requires_grad_(False)
    return pipe


@building
def load_pipeline(
    params: Params,
    workdir: Path,
    transformer: FluxTransformer2DModel | None = None,
    dtype: torch.dtype = torch.float32,
) -> FluxKontextPipeline:
    where = model_location(params, workdir)
    kwargs: dict[str, Any] = {"torch_dtype": dtype, "revision": where.revision}
    if transformer is not None:
        kwargs["transformer"] = transformer
    pipe = FluxKontextPipeline.from_pretrained(where.source, **kwargs)
    for name in ("vae", "text_encoder", "text_encoder_2", "transformer"):
        getattr(pipe, name).eval()
    return pipe


def place_pipeline(pipe: FluxKontextPipeline, params: Params, device: torch.device) -> FluxKontextPipeline:
    """Put a pipeline on `device`; with `offload_during_startup` on an accelerator, each component
    (text encoders, VAE, transformer) is moved there only while it runs (accelerate's model offload)."""
    if params.offload_during_startup and device.type != "cpu":
        pipe.enable_model_cpu_offload(device=device)
        return pipe
    return pipe.to(device)


def release(module: torch.nn.Module | None, params: Params) -> None:
    """After a cache stage: with `offload_during_startup`, hand the accelerator memory back at once
    instead of when the stage's objects are collected, so the next model finds it free."""
    if module is None or not params.offload_during_startup:
        return
    module.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
