"""The tensor store's batched folder sync writes the same entries as one sync per entry."""

from __future__ import annotations

import torch

from kontext_core.cache.store import TensorStore


def test_deferred_dir_sync_writes_the_same_entries(tmp_path):
    tensors = {f"k{i}": {"x": torch.arange(i + 3, dtype=torch.float32)} for i in range(6)}
    each, batched = TensorStore(tmp_path / "each"), TensorStore(tmp_path / "batched")
    for key, value in tensors.items():
        each.put(TensorStore.key(name=key), value)
    with batched.deferred_dir_sync():
        with batched.deferred_dir_sync():  # nested: the outer one syncs
            for key, value in list(tensors.items())[:3]:
                batched.put(TensorStore.key(name=key), value)
        for key, value in list(tensors.items())[3:]:
            batched.put(TensorStore.key(name=key), value)
        assert batched._unsynced_dirs  # the folders wait for the end of the block
    assert batched._unsynced_dirs is None
    for key, value in tensors.items():
        k = TensorStore.key(name=key)
        assert batched.path(k).read_bytes() == each.path(k).read_bytes()
        assert batched.has(k) and torch.equal(batched.get(k)["x"], value["x"])
    leftovers = [p for p in (tmp_path / "batched").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
