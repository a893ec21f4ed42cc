"""optimum-quanto quantization: accuracy against the float model, save/requantize, fused QKV."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from kontext_core.config import Params
from kontext_core.model.base import frozen_base_transformer
from kontext_core.model.fusion import fuse_qkv, is_fused
from kontext_core.model.kontext_step import StepInputs, kontext_step
from kontext_core.model.quantize import (
    LAYOUT_FILE,
    load_quantized,
    quantize_transformer,
    quantized_module_names,
    save_quantized,
    shard_name,
)
from kontext_core.model.tiny import build_tiny_pipeline

# Relative L2 error of the transformer's prediction against the float32 model (docs/adapters.md).
# `pytest -s -k relative` prints the measured errors.
BOUNDS = {"int8-quanto": 0.005, "fp8-quanto": 0.02, "int4-quanto": 0.05, "int2-quanto": 0.25}


@pytest.fixture(scope="module")
def base():
    return build_tiny_pipeline(seed=0).transformer


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    inputs = StepInputs(
        target_latents=torch.randn(2, 16, 8, 8, generator=g),
        reference_latents=[torch.randn(2, 16, 8, 8, generator=g)],
        prompt_embeds=torch.randn(2, 12, 32, generator=g),
        pooled_prompt_embeds=torch.randn(2, 32, generator=g),
    )
    return inputs, torch.randn(2, 16, 8, 8, generator=g), torch.tensor([0.3, 0.8])


def predict(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return kontext_step(model, *batch).prediction


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


@pytest.mark.parametrize("precision", sorted(BOUNDS))
def test_quantized_forward_stays_within_the_stated_relative_error(base, batch, precision):
    model = quantize_transformer(copy.deepcopy(base), precision)
    error = rel_error(predict(model, batch), predict(base, batch))
    print(f"{precision}: relative L2 error {error:.4%} (bound {BOUNDS[precision]:.1%})")  # shown with -s
    assert 1e-6 < error < BOUNDS[precision]  # above 0: the weights really were quantized


def test_blocks_are_quantized_and_the_io_layers_stay_in_full_precision(base):
    names = quantized_module_names(quantize_transformer(copy.deepcopy(base), "int8-quanto"))
    for kept in ("x_embedder", "context_embedder", "proj_out", "norm_out.linear"):
        assert kept not in names
    assert not [n for n in names if n.startswith("time_text_embed")]
    # Block linears, the AdaLN modulation and the single blocks' output projection are quantized.
    for quantized in (
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.norm1.linear",
        "single_transformer_blocks.1.proj_out",
        "transformer_blocks.0.ff.net.2",
    ):
        assert quantized in names


def test_saved_quantized_model_reloads_bit_exactly_and_rejects_a_mismatched_file(base, batch, tmp_path):
    model = quantize_transformer(copy.deepcopy(base), "int8-quanto")
    save_quantized(model, tmp_path / "q", "int8-quanto")
    reloaded = load_quantized(tmp_path / "q")
    assert quantized_module_names(reloaded) == quantized_module_names(model)
    assert torch.equal(predict(reloaded, batch), predict(model, batch))
    shard = tmp_path / "q" / shard_name(1, 4)  # transformer_blocks.0
    state = load_file(shard)
    state.pop("transformer_blocks.0.attn.to_q.weight._data")
    save_file(state, shard)
    with pytest.raises(ValueError, match=r"transformer_blocks\.0\.attn\.to_q\.weight"):
        load_quantized(tmp_path / "q")


def test_base_transformer_reads_the_saved_quantized_weights_not_the_base_model(batch, tmp_path):
    """`frozen_base_transformer` must rebuild from models/quantized (requantize), never quantize the base again:
    here the saved file comes from a different model (seed 1), and that is the model it returns."""
    from kontext_core.model.tiny import save_tiny_model

    save_tiny_model(tmp_path / "models/tiny-kontext", seed=0)
    other = quantize_transformer(build_tiny_pipeline(seed=1).transformer, "int8-quanto")
    save_quantized(other, tmp_path / "models/quantized/transformer", "int8-quanto")
    params = Params(pretrained_model_name_or_path="models/tiny-kontext", base_model_precision="int8-quanto")
    loaded = frozen_base_transformer(params, tmp_path, tmp_path / "models/quantized")
    assert torch.equal(predict(loaded, batch), predict(other, batch))
    own = quantize_transformer(build_tiny_pipeline(seed=0).transformer, "int8-quanto")
    assert not torch.allclose(predict(loaded, batch), predict(own, batch))


def test_fused_qkv_matches_unfused_and_survives_quantize_save_reload(base, batch, tmp_path):
    fused = fuse_qkv(copy.deepcopy(base))
    attn = fused.transformer_blocks[0].attn
    assert is_fused(fused) and hasattr(attn, "to_qkv") and hasattr(attn, "to_added_qkv")
    assert not hasattr(attn, "to_q") and not hasattr(fused.single_transformer_blocks[0].attn, "to_k")
    assert torch.allclose(predict(fused, batch), predict(base, batch), atol=1e-5)
    quantize_transformer(fused, "int8-quanto")
    assert "transformer_blocks.0.attn.to_qkv" in quantized_module_names(fused)
    save_quantized(fused, tmp_path / "q", "int8-quanto")
    assert json.loads((tmp_path / "q" / LAYOUT_FILE).read_text())["fuse_qkv_projections"] is True
    reloaded = load_quantized(tmp_path / "q")
    assert is_fused(reloaded)
    assert torch.equal(predict(reloaded, batch), predict(fused, batch))
