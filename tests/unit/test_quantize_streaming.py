"""Streamed quantization (block by block from lazily read shards) gives today's whole-model result."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import load_file

from kontext_core.model.fusion import fuse_qkv, is_fused
from kontext_core.model.kontext_step import StepInputs, kontext_step
from kontext_core.model.quantize import (
    LAYOUT_FILE,
    QMAP_FILE,
    load_quantized,
    quantize_streaming,
    quantize_transformer,
    save_quantized,
)
from kontext_core.model.tiny import save_tiny_model
from kontext_core.model.weights import INDEX_FILE, WeightsError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model's transformer folder (one file) and the same weights sharded in bf16."""
    root = tmp_path_factory.mktemp("stream")
    folder = save_tiny_model(root / "tiny") / "transformer"
    model = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
    sharded = root / "sharded"
    model.save_pretrained(sharded, max_shard_size="40KB")
    return folder, sharded


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(3)
    inputs = StepInputs(
        target_latents=torch.randn(1, 16, 8, 8, generator=g),
        reference_latents=[torch.randn(1, 16, 8, 8, generator=g)],
        prompt_embeds=torch.randn(1, 12, 32, generator=g),
        pooled_prompt_embeds=torch.randn(1, 32, generator=g),
    )
    return inputs, torch.randn(1, 16, 8, 8, generator=g), torch.tensor([0.4])


def predict(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return kontext_step(model, *batch).prediction


def saved_tensors(folder) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    return state


def assert_byte_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].reshape(-1).view(torch.uint8).equal(b[key].reshape(-1).view(torch.uint8)), key


@pytest.mark.parametrize("fuse", [False, True], ids=["separate-qkv", "fused-qkv"])
def test_streamed_quantization_equals_the_whole_model_pass_byte_for_byte(tiny, batch, tmp_path, fuse):
    folder, _ = tiny
    whole = FluxTransformer2DModel.from_pretrained(folder).eval()
    if fuse:
        fuse_qkv(whole)
    quantize_transformer(whole, "int8-quanto")
    whole_state = {k: v.contiguous() for k, v in whole.state_dict().items()}

    count = quantize_streaming(folder, tmp_path / "q", "int8-quanto", fuse=fuse)
    out = tmp_path / "q"
    assert_byte_equal(saved_tensors(out), whole_state)
    from optimum.quanto import quantization_map

    qmap = json.loads((out / QMAP_FILE).read_text())
    assert qmap == quantization_map(whole) and count == len(qmap)
    # the excluded set is the whole-model one: the output proj_out stays float, the single blocks' is int8
    assert "proj_out" not in qmap and "single_transformer_blocks.0.proj_out" in qmap
    assert json.loads((out / LAYOUT_FILE).read_text())["fuse_qkv_projections"] is fuse
    index = json.loads((out / INDEX_FILE).read_text())["weight_map"]
    assert len(set(index.values())) == 4  # embedders + 1 double + 2 single blocks, one shard each
    loaded = load_quantized(out)
    assert is_fused(loaded) is fuse
    assert torch.equal(predict(loaded, batch), predict(whole, batch))


def test_sharded_bf16_source_is_read_lazily_and_computed_in_the_base_dtype(tiny, tmp_path):
    """The hub's layout (index + shards, bf16): same tensors as from_pretrained(torch_dtype=float32)."""
    _, sharded = tiny
    assert (sharded / INDEX_FILE).exists() and len(list(sharded.glob("*.safetensors"))) > 2
    whole = FluxTransformer2DModel.from_pretrained(sharded, torch_dtype=torch.float32).eval()
    quantize_transformer(whole, "int8-quanto")
    quantize_streaming(sharded, tmp_path / "q", "int8-quanto", dtype=torch.float32)
    assert_byte_equal(saved_tensors(tmp_path / "q"), {k: v.contiguous() for k, v in whole.state_dict().items()})


def test_same_input_gives_the_same_bytes_and_save_quantized_writes_the_same_files(tiny, tmp_path):
    folder, _ = tiny
    quantize_streaming(folder, tmp_path / "a", "int8-quanto")
    quantize_streaming(folder, tmp_path / "b", "int8-quanto")
    whole = quantize_transformer(FluxTransformer2DModel.from_pretrained(folder).eval(), "int8-quanto")
    save_quantized(whole, tmp_path / "c", "int8-quanto")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    for other in ("b", "c"):
        assert sorted(p.name for p in (tmp_path / other).iterdir()) == names
        for name in names:
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / other / name).read_bytes(), (other, name)


def test_damaged_or_mismatched_quantized_folders_fail_with_the_path(tiny, tmp_path):
    folder, _ = tiny
    out = tmp_path / "q"
    quantize_streaming(folder, out, "int8-quanto")
    shard = sorted(out.glob("*-of-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=shard.name):
        load_quantized(out)
    shard.unlink()
    with pytest.raises(WeightsError, match=rf"{shard.name}: missing"):
        load_quantized(out)
    quantize_streaming(folder, out, "int8-quanto")
    layout = json.loads((out / LAYOUT_FILE).read_text())
    (out / LAYOUT_FILE).write_text(json.dumps({**layout, "format": 1}))
    with pytest.raises(WeightsError, match="re-run the quantize stage"):
        load_quantized(out)


def test_bad_source_and_precision_are_named(tiny, tmp_path):
    folder, _ = tiny
    with pytest.raises(ValueError, match="base_model_precision = 'int3-quanto': allowed"):
        quantize_streaming(folder, tmp_path / "q", "int3-quanto")
    with pytest.raises(WeightsError, match="neither diffusion_pytorch_model.safetensors nor"):
        quantize_streaming(tmp_path, tmp_path / "q", "int8-quanto")
    assert not (tmp_path / "q").exists()  # nothing half-written


def test_quantize_reads_a_hub_id_from_the_offline_hub_cache_through_huggingface_hub(tmp_path):
    """`pretrained_model_name_or_path: black-forest-labs/FLUX.1-Kontext-dev` with HF_HUB_OFFLINE=1: the
    sharded transformer of the cached snapshot is found by huggingface_hub and quantized block by block."""
    import os
    import subprocess
    import sys

    from kontext_core.model.replica import REPO_ID, write_hub_cache

    commit = write_hub_cache(tmp_path / "hf", double_blocks=2, single_blocks=1)
    script = (
        "import sys; from pathlib import Path; from kontext_core.config import Params; "
        "from kontext_core.model.weights import component_folder; "
        "from kontext_core.model.quantize import quantize_streaming, load_quantized; "
        f"folder = component_folder(Params(pretrained_model_name_or_path={REPO_ID!r}), Path('.'), 'transformer'); "
        "print(folder); n = quantize_streaming(folder, Path(sys.argv[1]), 'int8-quanto'); "
        "m = load_quantized(Path(sys.argv[1])); print(n, len(m.transformer_blocks), len(m.single_transformer_blocks))"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "q")], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    folder, counts = done.stdout.strip().splitlines()[-2:]
    assert f"snapshots/{commit}/transformer" in folder
    modules, double, single = map(int, counts.split())
    assert (double, single) == (2, 1) and modules > 0
    assert len(json.loads((tmp_path / "q" / INDEX_FILE).read_text())["weight_map"]) > 0
