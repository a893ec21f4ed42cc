"""Fused QKV projections (`fuse_qkv_projections`), done before quantization and before adapters.

diffusers' `fuse_projections` adds `to_qkv` / `to_added_qkv` beside the separate projections and keeps
both; the separate ones are then dead weight (and would be quantized and saved for nothing), so they
are removed. Fusing must precede quanto: concatenating already-quantized weights is not supported.
"""

from __future__ import annotations

import torch

SEPARATE_PROJECTIONS = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")


def fuse_qkv(transformer: torch.nn.Module) -> torch.nn.Module:
    """Fuse every attention's QKV projections in place and drop the unfused copies.

    Works on the whole transformer or on any part of it (one block at a time, kontext_core.model.blocks):
    each attention module is fused on its own, as diffusers' `fuse_qkv_projections` does for all.
    """
    from diffusers.models.attention import AttentionModuleMixin

    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, AttentionModuleMixin) and module._supports_qkv_fusion:
                module.fuse_projections()
    for module in transformer.modules():
        if getattr(module, "fused_projections", False):
            for name in SEPARATE_PROJECTIONS:
                if name in module._modules:
                    del module._modules[name]
    return transformer


def is_fused(transformer: torch.nn.Module) -> bool:
    return any(getattr(m, "fused_projections", False) for m in transformer.modules())
