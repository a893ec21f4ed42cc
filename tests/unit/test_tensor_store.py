"""The tensor store writes entries atomically, in synced groups, with the bytes `save_file` writes."""

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


def test_put_writes_the_bytes_of_safetensors_save_file(tmp_path):
    """Entries written in groups are byte for byte what `save_file` writes, so caches made before
    grouped writes stay valid (same names, same bytes)."""
    from safetensors.torch import save_file

    store = TensorStore(tmp_path / "s")
    value = {"b": torch.arange(12, dtype=torch.float32).reshape(3, 4), "a": torch.ones(2, dtype=torch.bfloat16)}
    key = TensorStore.key(name="x")
    store.put(key, value)
    save_file(value, tmp_path / "reference.safetensors")
    assert store.path(key).read_bytes() == (tmp_path / "reference.safetensors").read_bytes()
    assert oct(store.path(key).stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    from kontext_core.fsutil import umask

    return umask()


def test_a_failed_group_write_leaves_no_entry_and_no_temp_file(tmp_path, monkeypatch):
    import kontext_core.cache.store as store_module

    store = TensorStore(tmp_path / "s")
    keys = [TensorStore.key(n=i) for i in range(5)]

    def disk_full(fds):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "sync_open_files", disk_full)
    try:
        store.put_many([(k, {"x": torch.zeros(3)}) for k in keys])
    except OSError as exc:
        assert "No space left" in str(exc)
    else:
        raise AssertionError("a failed sync must fail the write")
    assert not [p for p in (tmp_path / "s").rglob("*") if p.is_file()]
    assert not any(store.has(k) for k in keys)


def test_sync_open_files_with_syncfs_and_with_fsync_each(tmp_path, monkeypatch):
    import os

    from kontext_core import fsutil

    for syncfs in (fsutil._SYNCFS, None):
        monkeypatch.setattr(fsutil, "_SYNCFS", syncfs)
        fds = [os.open(tmp_path / f"{syncfs is None}-{i}", os.O_WRONLY | os.O_CREAT) for i in range(3)]
        try:
            for fd in fds:
                fsutil.write_all(fd, b"x" * 70000)
            fsutil.sync_open_files(fds)
            fsutil.sync_open_files(fds[:1])
        finally:
            for fd in fds:
                os.close(fd)
    assert sorted(p.stat().st_size for p in tmp_path.iterdir()) == [70000] * 6


def test_cache_writer_writes_everything_in_groups_and_raises_a_failed_write(tmp_path):
    from kontext_core.cache.store import CacheWriter

    keys = [TensorStore.key(n=i) for i in range(10)]

    class Counting(TensorStore):
        groups: list[int] = []

        def put_many(self, entries):
            self.groups.append(len(entries))
            return super().put_many(entries)

    for background in (False, True):
        store = Counting(tmp_path / f"s-{background}")
        store.groups = []
        with store.deferred_dir_sync(), CacheWriter(store, group=4, background=background) as writer:
            for start in range(0, 10, 3):
                chunk = range(start, min(start + 3, 10))
                writer.put_many([(keys[i], {"x": torch.full((2,), float(i))}) for i in chunk])
        assert all(store.has(k) for k in keys)
        assert float(store.get(keys[7])["x"][0]) == 7.0
        assert store.groups == [6, 4]  # a group is written once 4 entries are collected; the rest on leaving

    class Broken(TensorStore):
        def put_many(self, entries):
            raise OSError("disk full")

    for background in (False, True):
        try:
            with CacheWriter(Broken(tmp_path / "b"), group=1, background=background) as writer:
                writer.put_many([(keys[0], {"x": torch.zeros(1)})])
        except OSError as exc:
            assert "disk full" in str(exc)
        else:
            raise AssertionError("a failed write must fail the stage")
