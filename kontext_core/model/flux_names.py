"""Where each module of diffusers' FluxTransformer2DModel lives in the original (BFL) Flux checkpoint.

The kohya layout that ComfyUI, Forge and kohya's own scripts read names BFL modules
(`lora_unet_double_blocks_0_img_attn_qkv`). Most diffusers modules have one BFL module each; the
separate projections do not: a double block's image q/k/v are one fused `img_attn.qkv` (text:
`txt_attn.qkv`), and a single block's q/k/v and `proj_mlp` are one `linear1`, stacked along the
output rows in that order (ComfyUI's `flux_to_diffusers` table maps the same way, by row offsets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Flux's single blocks widen the MLP by this ratio (diffusers' FluxSingleTransformerBlock, BFL's mlp_ratio).
MLP_RATIO = 4


@dataclass(frozen=True)
class Target:
    """The BFL module a diffusers module writes into, and which part of its output rows it is."""

    module: str  # BFL module path, e.g. "double_blocks.0.img_attn.qkv"
    part: str = ""  # the diffusers module's leaf name when the BFL module fuses several, else ""
    parts: tuple[str, ...] = ()  # the fused module's parts, in row order
    swap_halves: bool = False  # BFL orders this module's output (shift, scale) where diffusers has (scale, shift)

    @property
    def fused(self) -> bool:
        return bool(self.parts)


DOUBLE_ONE_TO_ONE = {
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "attn.to_qkv": "img_attn.qkv",  # fuse_qkv_projections
    "attn.to_added_qkv": "txt_attn.qkv",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
}
DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
SINGLE_ONE_TO_ONE = {"proj_out": "linear2", "norm.linear": "modulation.lin"}
SINGLE_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
SINGLE_LINEAR1_FUSED_QKV = ("attn.to_qkv", "proj_mlp")
TOP_LEVEL = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "proj_out": "final_layer.linear",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
}
SWAPPED = {"norm_out.linear": "final_layer.adaLN_modulation.1"}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


def bfl_target(module: str, fused_qkv: bool = False) -> Target:
    """The BFL module of diffusers module `module` (no `transformer.` prefix); ValueError if it has none.
    `fused_qkv`: the single block's attention was fused (`attn.to_qkv`), so linear1 has two parts."""
    match = _BLOCK.match(module)
    if match is None:
        if module in TOP_LEVEL:
            return Target(TOP_LEVEL[module])
        if module in SWAPPED:
            return Target(SWAPPED[module], swap_halves=True)
        raise ValueError(f"{module}: no module of the original Flux checkpoint corresponds to it")
    kind, index, rest = match.groups()
    if kind == "transformer_blocks":
        prefix = f"double_blocks.{index}."
        if rest in DOUBLE_ONE_TO_ONE:
            return Target(prefix + DOUBLE_ONE_TO_ONE[rest])
        for fused, parts in DOUBLE_FUSED.items():
            if rest in parts:
                return Target(prefix + fused, rest, parts)
    else:
        prefix = f"single_blocks.{index}."
        if rest in SINGLE_ONE_TO_ONE:
            return Target(prefix + SINGLE_ONE_TO_ONE[rest])
        parts = SINGLE_LINEAR1_FUSED_QKV if fused_qkv or rest == "attn.to_qkv" else SINGLE_LINEAR1
        if rest in parts:
            return Target(prefix + "linear1", rest, parts)
    raise ValueError(f"{module}: no module of the original Flux checkpoint corresponds to it")


def part_rows(part: str, hidden: int) -> int:
    """Output rows of one part of a fused module, for a transformer of width `hidden`."""
    if part == "proj_mlp":
        return hidden * MLP_RATIO
    if part == "attn.to_qkv":
        return hidden * 3
    return hidden


def kohya_name(bfl_module: str) -> str:
    return "lora_unet_" + bfl_module.replace(".", "_")
