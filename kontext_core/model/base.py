"""The frozen base transformer that adapters train and validate on."""

from __future__ import annotations

from pathlib import Path

import torch

from kontext_core.config import Params


def frozen_base_transformer(params: Params, workdir: Path, quantized_dir: Path, device: torch.device | None = None):
    """The frozen base transformer in training precision: the saved quantized one (rebuilt block by
    block with quanto's `requantize` straight onto `device`, no new quantization pass), or the original
    for `no_change` (loaded on the host; the caller moves it)."""
    from kontext_core.model.fusion import fuse_qkv
    from kontext_core.model.load import load_transformer
    from kontext_core.model.quantize import load_quantized

    if params.base_model_precision == "no_change":
        model = load_transformer(params, workdir).requires_grad_(False)
        return fuse_qkv(model) if params.fuse_qkv_projections else model
    return load_quantized(Path(quantized_dir) / "transformer", device=device)
