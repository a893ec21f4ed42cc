"""LoRA target presets and options, fused-QKV LoRA files, LyCORIS config checks."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import FluxKontextPipeline
from peft.tuners.lora import LoraLayer

from kontext_core.config import ConfigError, Params, params_from_dict
from kontext_core.model.adapter_kinds import add_adapter, attach_saved_adapter
from kontext_core.model.fusion import fuse_qkv
from kontext_core.model.kontext_step import StepInputs, kontext_step
from kontext_core.model.lycoris import load_lycoris_config
from kontext_core.model.quantize import quantize_transformer
from kontext_core.model.tiny import build_tiny_pipeline

ATTN_DOUBLE = {"attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"}
CONTEXT = {"attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"}
ATTN_SINGLE = {"attn.to_q", "attn.to_k", "attn.to_v"}
FF_DOUBLE = {"ff.net.0.proj", "ff.net.2"}
FF_CONTEXT = {"ff_context.net.0.proj", "ff_context.net.2"}
FF_SINGLE = {"proj_mlp", "proj_out"}


def expected(double: set[str], single: set[str]) -> set[str]:
    """Module names in the tiny model (1 double block, 2 single blocks)."""
    return {f"transformer_blocks.0.{s}" for s in double} | {
        f"single_transformer_blocks.{i}.{s}" for i in range(2) for s in single
    }


PRESETS = {
    "all": expected(ATTN_DOUBLE | CONTEXT, ATTN_SINGLE),  # 14
    "all+ffs": expected(ATTN_DOUBLE | CONTEXT | FF_DOUBLE | FF_CONTEXT, ATTN_SINGLE | FF_SINGLE),  # 22
    "context": expected(CONTEXT, set()),  # 4
    "context+ffs": expected(CONTEXT | FF_CONTEXT, set()),  # 6
}


@pytest.fixture(scope="module")
def base():
    return build_tiny_pipeline(seed=0).transformer


def lora_modules(model) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_targets_exactly_its_modules(base, preset):
    model = copy.deepcopy(base)
    add_adapter(model, Params(flux_lora_target=preset))
    assert lora_modules(model) == PRESETS[preset]
    assert "proj_out" not in lora_modules(model)  # the final output layer is not a block feed-forward


def test_explicit_module_list_and_lora_options(base):
    model = copy.deepcopy(base)
    params = Params(flux_lora_target=["to_k", "ff.net.2"], lora_rank=3, lora_alpha=6, lora_dropout=0.25)
    adapter = add_adapter(model, params)
    assert lora_modules(model) == expected({"attn.to_k", "ff.net.2"}, {"attn.to_k"})
    layer = model.transformer_blocks[0].attn.to_k
    assert layer.lora_A["default"].weight.shape == (3, 32)
    assert layer.scaling["default"] == 2.0
    assert layer.lora_dropout["default"].p == 0.25
    # peft's default init: B = 0, so a fresh adapter leaves the model unchanged.
    assert all(torch.count_nonzero(v) == 0 for k, v in adapter.state_dict().items() if "lora_B" in k)
    # Both combinations are refused by the config model itself now (kontext config check).
    with pytest.raises(ConfigError, match="must not be empty"):
        params_from_dict({"flux_lora_target": []})
    with pytest.raises(ConfigError, match="lora_init_type = 'pissa'"):
        params_from_dict({"lora_init_type": "pissa"})
    # A quantized transformer handed over with params that claim an unquantized base.
    quantized = quantize_transformer(copy.deepcopy(base), "int8-quanto")
    with pytest.raises(ConfigError, match="lora_init_type = 'pissa'"):
        add_adapter(quantized, Params(lora_init_type="pissa", base_model_precision="no_change"))


def _batch():
    g = torch.Generator().manual_seed(3)
    inputs = StepInputs(
        torch.randn(1, 16, 8, 8, generator=g),
        [torch.randn(1, 16, 8, 8, generator=g)],
        torch.randn(1, 8, 32, generator=g),
        torch.randn(1, 32, generator=g),
    )
    return inputs, torch.randn(1, 16, 8, 8, generator=g), torch.tensor([0.6])


def test_fused_lora_saves_as_standard_diffusers_lora_with_the_same_outputs(base, tmp_path):
    """LoRA on fused to_qkv is saved split into to_q/to_k/to_v; stock load_lora_weights on the unfused
    model then reproduces the fused model's outputs, and attach_saved_adapter re-fuses it."""
    batch = _batch()
    fused = fuse_qkv(copy.deepcopy(base))
    torch.manual_seed(0)
    adapter = add_adapter(fused, Params(lora_init_type="gaussian"))
    assert "transformer_blocks.0.attn.to_qkv" in lora_modules(fused)
    assert "transformer_blocks.0.attn.to_added_qkv" in lora_modules(fused)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a "trained" B, non-zero
        want = kontext_step(fused, *batch).prediction
    adapter.save(tmp_path / "adapter")

    pipe = FluxKontextPipeline(None, None, None, None, None, None, copy.deepcopy(base))
    pipe.load_lora_weights(str(tmp_path / "adapter"), weight_name="pytorch_lora_weights.safetensors")
    assert "transformer_blocks.0.attn.to_q" in lora_modules(pipe.transformer)
    with torch.no_grad():
        assert torch.allclose(kontext_step(pipe.transformer, *batch).prediction, want, atol=1e-5)

    refused = fuse_qkv(copy.deepcopy(base))
    attach_saved_adapter(refused, tmp_path / "adapter", Params())
    with torch.no_grad():
        assert torch.allclose(kontext_step(refused, *batch).prediction, want, atol=1e-5)


def test_lycoris_config_errors_name_the_key(tmp_path):
    path = tmp_path / "lyco.json"
    params = Params(lora_type="lycoris", lycoris_config=str(path))
    with pytest.raises(ConfigError, match="file not found"):
        load_lycoris_config(params)
    path.write_text(json.dumps({"algo": "lokr", "factr": 4}))
    with pytest.raises(ConfigError, match="unknown key 'factr'"):
        load_lycoris_config(params)
    path.write_text(json.dumps({"algo": "nope"}))
    with pytest.raises(ConfigError, match="algo = 'nope'"):
        load_lycoris_config(params)
    path.write_text(json.dumps({"algo": "lokr", "apply_preset": {"target_module": ["NoSuchBlock"]}}))
    with pytest.raises(ConfigError, match="matched no module"):
        add_adapter(build_tiny_pipeline(seed=0).transformer, params)


def test_lokr_adapter_is_part_of_the_model_and_saves_deterministically(tmp_path):
    from tests.conftest import ROOT

    saved = []
    for run in range(2):
        torch.manual_seed(7)
        model = build_tiny_pipeline(seed=0).transformer
        adapter = add_adapter(model, Params(lora_type="lycoris"), workdir=ROOT)
        own = {id(p) for p in model.parameters()}
        # Submodule of the transformer: follows .to(), offload hooks and DDP like peft's layers.
        assert adapter.parameters() and all(id(p) in own for p in adapter.parameters())
        state = adapter.state_dict()
        assert any(k.endswith("lokr_w1") for k in state)
        with torch.no_grad():
            for p in adapter.parameters():
                p.add_(0.01)
        adapter.load_state_dict(state)
        assert all(torch.equal(v, adapter.state_dict()[k]) for k, v in state.items())
        saved.append(adapter.save(tmp_path / f"run{run}").read_bytes())
    assert saved[0] == saved[1]
