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


def test_background_writer_writes_everything_and_raises_a_failed_write(tmp_path):
    from kontext_core.cache.store import BackgroundWriter

    store = TensorStore(tmp_path / "s")
    keys = [TensorStore.key(n=i) for i in range(10)]
    with store.deferred_dir_sync(), BackgroundWriter(store, backlog=1) as writer:
        for start in range(0, 10, 3):
            chunk = range(start, min(start + 3, 10))
            writer.put_many([(keys[i], {"x": torch.full((2,), float(i))}) for i in chunk])
    assert all(store.has(k) for k in keys)
    assert float(store.get(keys[7])["x"][0]) == 7.0

    class Broken(TensorStore):
        def put(self, key, tensors):
            raise OSError("disk full")

    try:
        with BackgroundWriter(Broken(tmp_path / "b")) as writer:
            writer.put_many([(keys[0], {"x": torch.zeros(1)})])
    except OSError as exc:
        assert "disk full" in str(exc)
    else:
        raise AssertionError("a failed write must fail the stage")
