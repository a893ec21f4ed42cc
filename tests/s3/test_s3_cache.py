"""The shared tensor cache on S3: content-addressed, and a partial or damaged object is never trusted."""

from __future__ import annotations

import pytest
import torch
from pydantic import SecretStr

from kontext_core.cache.s3_store import SHA_META, LayeredStore, S3TensorStore
from kontext_core.cache.store import TensorStore
from kontext_core.storage.s3 import S3Store
from tests.s3.conftest import S3Server

pytestmark = pytest.mark.s3

BUCKET = "kontext-cache"


@pytest.fixture(scope="module")
def remote(s3_server: S3Server) -> S3TensorStore:
    s3_server.make_bucket(BUCKET)
    store = S3Store(BUCKET, s3_server.endpoint, s3_server.region, SecretStr(s3_server.key_id),
                    SecretStr(s3_server.secret))
    return S3TensorStore(f"s3://{BUCKET}/vae", store)


def test_entries_round_trip_and_a_gpu_worker_reuses_them(remote, tmp_path):
    key = S3TensorStore.key(image="abc", crop=[0, 0, 64, 64], vae="fp")
    assert not remote.has(key)
    latents = {"latents": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    made_here = LayeredStore(TensorStore(tmp_path / "cpu-box"), remote)
    made_here.put(key, latents)
    assert remote.has(key)
    # Another machine: empty local cache, same bucket; the entry comes down verified, bytes equal.
    elsewhere = LayeredStore(TensorStore(tmp_path / "gpu-box"), remote)
    assert elsewhere.has(key)
    assert torch.equal(elsewhere.get(key)["latents"], latents["latents"])
    assert elsewhere.path(key).read_bytes() == made_here.path(key).read_bytes()


def test_an_object_without_its_digest_or_with_other_bytes_is_not_trusted(remote, s3_server, tmp_path):
    client = s3_server.client()
    # Written by something else (no digest metadata, e.g. a copy cut short): absent.
    partial = S3TensorStore.key(case="partial")
    client.put_object(Bucket=BUCKET, Key=remote.object_key(partial), Body=b"\x00" * 10)
    assert not remote.has(partial)
    # Right metadata, wrong bytes: dropped on read and recomputed by the caller.
    damaged = S3TensorStore.key(case="damaged")
    remote.put(damaged, {"x": torch.ones(4)})
    meta = client.head_object(Bucket=BUCKET, Key=remote.object_key(damaged))["Metadata"]
    client.put_object(Bucket=BUCKET, Key=remote.object_key(damaged), Body=b"not the tensors", Metadata=meta)
    assert meta[SHA_META] and remote.get_bytes(damaged) is None
    assert not remote.has(damaged)
    layered = LayeredStore(TensorStore(tmp_path / "local"), remote)
    assert not layered.has(damaged) and not layered.path(damaged).exists()


def test_a_second_machine_downloads_the_latents_and_embeds_instead_of_encoding(s3_server, tmp_path, monkeypatch):
    """cache_dir_vae / the text_embeds cache_dir on s3://: the CPU box encodes, the GPU box reuses."""
    import json
    import shutil

    from kontext_core.stages import run_stage
    from tests.conftest import make_project

    for key, value in s3_server.env().items():  # the AWS chain: no aws entry names the cache bucket
        monkeypatch.setenv(key, value)
    s3_server.make_bucket(BUCKET)
    cpu_box = tmp_path / "cpu-box"
    make_project(cpu_box, data_backend_config="config/shared.json", eval_dataset_id=None,
                 tiny_model={"seed": 0, "pretrain_vae_steps": 0, "pretrain_transformer_steps": 0})
    entries = [
        {"id": "edited", "type": "local", "instance_data_dir": "data/samples/pairs/edited", "resolution": 64,
         "caption_strategy": "textfile", "conditioning_data": ["reference"], "cache_dir_vae": f"s3://{BUCKET}/vae"},
        {"id": "reference", "type": "local", "instance_data_dir": "data/samples/pairs/reference", "resolution": 64,
         "conditioning_type": "reference_strict", "caption_strategy": None, "cache_dir_vae": f"s3://{BUCKET}/vae"},
        {"id": "text", "dataset_type": "text_embeds", "default": True, "type": "local",
         "cache_dir": f"s3://{BUCKET}/text"},
    ]
    (cpu_box / "config" / "shared.json").write_text(json.dumps(entries))
    for name in ("init", "fetch", "pair", "degrade", "cache_vae", "cache_text"):
        manifest = run_stage(name, cpu_box / "params.yaml")
    assert manifest["info"]["encoded"] > 0
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix="vae/").get("KeyCount", 0)
    assert listed > 0
    # The GPU box: the same project without caches or cache manifests.
    gpu_box = tmp_path / "gpu-box"
    shutil.copytree(cpu_box, gpu_box, ignore=shutil.ignore_patterns("cache"))
    for name in ("cache_vae", "cache_text"):
        (gpu_box / "artifacts" / "manifests" / f"{name}.json").unlink()
    for name in ("cache_vae", "cache_text"):
        ran = run_stage(name, gpu_box / "params.yaml")
        assert not ran["skipped"] and ran["info"]["encoded"] == 0, name
    for sub in ("cache/vae", "cache/text"):
        made = sorted(p.relative_to(cpu_box) for p in (cpu_box / sub).rglob("*.safetensors"))
        assert made and made == sorted(p.relative_to(gpu_box) for p in (gpu_box / sub).rglob("*.safetensors"))
        assert all((cpu_box / p).read_bytes() == (gpu_box / p).read_bytes() for p in made)
