"""The FLUX.1 Kontext [dev] replica: the hub's layout, shards that match their index, the same
bytes per seed, and loading through diffusers' own `from_pretrained` from a hub cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors import safe_open

from kontext_core.hub.cache import file_etag, repo_folder
from kontext_core.model.replica import REPO_ID, write_hub_cache, write_replica

HUB_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors.index.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer_2/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
}


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> Path:
    return write_replica(tmp_path_factory.mktemp("replica") / "repo", seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_replica_has_the_hub_layout_and_the_real_configs(replica):
    names = set(_files(replica))
    assert HUB_FILES <= names
    index = json.loads((replica / "model_index.json").read_text())
    assert index["_class_name"] == "FluxKontextPipeline"
    assert index["tokenizer_2"] == ["transformers", "T5TokenizerFast"]
    transformer = json.loads((replica / "transformer/config.json").read_text())
    assert (transformer["in_channels"], transformer["guidance_embeds"]) == (64, True)
    assert (transformer["num_layers"], transformer["num_single_layers"]) == (1, 2)
    vae = json.loads((replica / "vae/config.json").read_text())
    assert (vae["latent_channels"], vae["shift_factor"], vae["scaling_factor"]) == (16, 0.1159, 0.3611)
    t5 = json.loads((replica / "text_encoder_2/config.json").read_text())
    assert (t5["feed_forward_proj"], t5["num_layers"]) == ("gated-gelu", 1)
    scheduler = json.loads((replica / "scheduler/scheduler_config.json").read_text())
    assert (scheduler["shift"], scheduler["use_dynamic_shifting"]) == (3.0, True)


@pytest.mark.parametrize(
    "folder, stem",
    [("transformer", "diffusion_pytorch_model"), ("text_encoder_2", "model")],
)
def test_shards_hold_exactly_what_their_index_says(replica, folder, stem):
    index = json.loads((replica / folder / f"{stem}.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2, "the small replica's default shard size must split it, as the hub's are split"
    assert shards == [f"{stem}-{n:05d}-of-{len(shards):05d}.safetensors" for n in range(1, len(shards) + 1)]
    on_disk = sorted(p.name for p in (replica / folder).glob(f"{stem}-*.safetensors"))
    assert on_disk == shards
    total = 0
    for shard in shards:
        with safe_open(replica / folder / shard, framework="pt") as fh:
            keys = set(fh.keys())
            assert keys == {k for k, v in index["weight_map"].items() if v == shard}
            for key in keys:
                tensor = fh.get_tensor(key)
                assert str(tensor.dtype) == "torch.bfloat16"
                total += tensor.numel() * tensor.element_size()
    assert index["metadata"]["total_size"] == total


def test_same_seed_same_bytes_other_seed_other_weights(replica, tmp_path):
    again = _files(write_replica(tmp_path / "again", seed=0))
    assert again == _files(replica)
    other = _files(write_replica(tmp_path / "other", seed=1))
    assert other["model_index.json"] == again["model_index.json"]
    assert other["vae/diffusion_pytorch_model.safetensors"] != again["vae/diffusion_pytorch_model.safetensors"]


def test_bad_shape_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="replica width: 'huge'"):
        write_replica(tmp_path / "r", width="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="t5_layers"):
        write_replica(tmp_path / "r", t5_layers=0)
    assert not (tmp_path / "r").exists()


def test_hub_cache_is_laid_out_as_huggingface_hub_leaves_it_and_loads_offline(replica, tmp_path):
    hf_home = tmp_path / "hf"
    commit = write_hub_cache(hf_home, seed=0)
    assert len(commit) == 40 and int(commit, 16) >= 0
    assert write_hub_cache(hf_home, seed=0) == commit, "the commit id follows from the content"
    repo = repo_folder(hf_home / "hub", REPO_ID)
    assert (repo / "refs" / "main").read_text() == commit
    snapshot = repo / "snapshots" / commit
    for rel, data in _files(replica).items():
        link = snapshot / rel
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        blob = Path(os.path.realpath(link))
        assert blob.parent == (repo / "blobs").resolve() and blob.read_bytes() == data
        assert blob.name == file_etag(replica / rel)
    # LFS files are named by their sha256 (64 hex), plain git files by their blob sha1 (40 hex).
    assert len(os.path.basename(os.readlink(snapshot / "vae/diffusion_pytorch_model.safetensors"))) == 64
    assert len(os.path.basename(os.readlink(snapshot / "model_index.json"))) == 40

    from huggingface_hub import snapshot_download

    assert Path(snapshot_download(REPO_ID, cache_dir=hf_home / "hub", local_files_only=True)) == snapshot

    import torch
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(REPO_ID, cache_dir=hf_home / "hub", local_files_only=True)
    assert pipe.transformer.config.num_single_layers == 2
    with safe_open(replica / "vae/diffusion_pytorch_model.safetensors", framework="pt") as fh:
        key = "encoder.conv_in.weight"
        assert torch.equal(pipe.vae.state_dict()[key].to(torch.bfloat16), fh.get_tensor(key))
