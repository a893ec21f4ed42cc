"""The kohya / ComfyUI export carries every module the adapter trained, where ComfyUI's loader puts it.

The expected places are written out here from ComfyUI's own table (comfy/utils.py `flux_to_diffusers`:
diffusers module -> BFL module and row offset), not taken from the exporter: each exported LoRA is
applied as ComfyUI applies one (up @ down * alpha / rank on the BFL weight) and compared, module by
module, with the delta the diffusers adapter gives.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import load_file

from kontext_core.config import params_from_dict
from kontext_core.model.export import export_kohya
from kontext_core.model.tiny import TINY_TRANSFORMER_CONFIG

HIDDEN = TINY_TRANSFORMER_CONFIG["attention_head_dim"] * TINY_TRANSFORMER_CONFIG["num_attention_heads"]
DOUBLE = {  # diffusers leaf -> (BFL module, first output row)
    "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", HIDDEN),
    "attn.to_v": ("img_attn.qkv", 2 * HIDDEN),
    "attn.add_q_proj": ("txt_attn.qkv", 0),
    "attn.add_k_proj": ("txt_attn.qkv", HIDDEN),
    "attn.add_v_proj": ("txt_attn.qkv", 2 * HIDDEN),
    "attn.to_out.0": ("img_attn.proj", 0),
    "attn.to_add_out": ("txt_attn.proj", 0),
    "ff.net.0.proj": ("img_mlp.0", 0),
    "ff.net.2": ("img_mlp.2", 0),
    "ff_context.net.0.proj": ("txt_mlp.0", 0),
    "ff_context.net.2": ("txt_mlp.2", 0),
}
SINGLE = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", HIDDEN),
    "attn.to_v": ("linear1", 2 * HIDDEN),
    "proj_mlp": ("linear1", 3 * HIDDEN),
    "proj_out": ("linear2", 0),
}
# Output rows of the BFL modules that fuse several diffusers ones.
FUSED_ROWS = {"img_attn.qkv": 3 * HIDDEN, "txt_attn.qkv": 3 * HIDDEN, "linear1": 7 * HIDDEN}


def comfy_place(module: str) -> tuple[str, int]:
    kind, index, leaf = module.split(".", 2)
    table, bfl = (DOUBLE, "double_blocks") if kind == "transformer_blocks" else (SINGLE, "single_blocks")
    name, offset = table[leaf]
    return f"{bfl}.{index}.{name}", offset


def tiny_transformer() -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(**TINY_TRANSFORMER_CONFIG).eval()


def lora_adapter(tmp_path, target: str):
    from kontext_core.model.adapters import Adapter, add_lora

    params = params_from_dict({"flux_lora_target": target, "lora_rank": 4, "lora_alpha": 8})
    transformer = tiny_transformer()
    add_lora(transformer, params)
    with torch.no_grad():  # lora_B starts at zero: give every module a delta of its own
        for name, weight in transformer.named_parameters():
            if "lora_" in name:
                weight.copy_(torch.randn_like(weight))
    Adapter(transformer, params).save(tmp_path / "adapter")
    return transformer, tmp_path / "adapter"


def diffusers_deltas(transformer) -> dict[str, torch.Tensor]:
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLayer):
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            deltas[name] = (b @ a * module.scaling["default"]).detach()
    return deltas


@pytest.mark.parametrize("target", ["all", "all+ffs", "context+ffs"])
def test_every_trained_lora_module_lands_where_comfyui_maps_it(tmp_path, target):
    transformer, adapter = lora_adapter(tmp_path, target)
    deltas = diffusers_deltas(transformer)
    exported = load_file(str(export_kohya(adapter, tmp_path / "kohya.safetensors")))

    applied: dict[str, torch.Tensor] = {}
    for key in exported:
        name, _, param = key.partition(".")
        assert key.startswith("lora_unet_") and param in ("lora_down.weight", "lora_up.weight", "alpha"), key
        down, up = exported[f"{name}.lora_down.weight"], exported[f"{name}.lora_up.weight"]
        applied[name] = up @ down * float(exported[f"{name}.alpha"]) / down.shape[0]
    covered: dict[str, list[tuple[int, int]]] = {}
    for module, delta in deltas.items():
        bfl, offset = comfy_place(module)
        name = "lora_unet_" + bfl.replace(".", "_")
        assert name in applied, f"{module} ({bfl}) missing from the export"
        rows = FUSED_ROWS.get(bfl.split(".", 2)[2], delta.shape[0])
        assert applied[name].shape == (rows, delta.shape[1]), f"{bfl}: wrong shape"
        torch.testing.assert_close(applied[name][offset : offset + delta.shape[0]], delta, rtol=1e-5, atol=1e-6)
        covered.setdefault(name, []).append((offset, offset + delta.shape[0]))
    assert set(applied) == set(covered), "modules in the export that the adapter did not train"
    for name, spans in covered.items():  # rows of untrained parts of a fused module stay untouched
        rest = torch.ones(applied[name].shape[0], dtype=torch.bool)
        for start, end in spans:
            rest[start:end] = False
        assert torch.count_nonzero(applied[name][rest]) == 0, name
    if target == "all+ffs":
        print(f"all+ffs: {len(deltas)} trained modules -> {len(applied)} kohya modules, every one present")


def test_every_lokr_module_is_exported_under_the_name_comfyui_maps(tmp_path):
    from kontext_core.model.adapter_kinds import kind_for

    config = {
        "algo": "lokr", "linear_dim": 10000, "linear_alpha": 1, "factor": 4,
        "apply_preset": {
            "target_module": ["FluxAttention", "FeedForward"],
            "target_name": ["single_transformer_blocks.*.proj_mlp", "single_transformer_blocks.*.proj_out"],
            "use_fnmatch": True,
        },
    }  # fmt: skip
    (tmp_path / "lycoris.json").write_text(json.dumps(config))
    params = params_from_dict({"lora_type": "lycoris", "lycoris_config": str(tmp_path / "lycoris.json")})
    transformer = tiny_transformer()
    adapter = kind_for(params).add(transformer, params, tmp_path)
    saved = adapter.save(tmp_path / "adapter")
    trained = adapter.state_dict()

    exported = load_file(str(export_kohya(saved.parent, tmp_path / "lokr.safetensors")))
    assert exported.keys() == trained.keys()
    for key, value in trained.items():
        torch.testing.assert_close(exported[key], value)
    flat = {name.replace(".", "_"): name for name, _ in transformer.named_modules()}
    modules = {key.partition(".")[0] for key in exported}
    for module in modules:
        diffusers_name = flat[module.removeprefix("lycoris_")]
        comfy_place(diffusers_name)  # a KeyError here: ComfyUI has no place for the module
        assert f"{module}.alpha" in exported
    leaves = {flat[m.removeprefix("lycoris_")].split(".", 2)[2] for m in modules}
    assert {"ff.net.0.proj", "ff.net.2", "ff_context.net.2", "attn.to_q", "attn.add_v_proj", "proj_mlp"} <= leaves
    print(f"LoKr: {len(modules)} trained modules, every one exported under its lycoris_ name")
