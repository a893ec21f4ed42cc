"""cache_vae's batches arrive in order with the same pixels whether decoded in line or on threads."""

from __future__ import annotations

import threading

import torch

from kontext_core.stages.cache_vae import _decoded, decode_threads_pay


def test_prefetched_batches_equal_in_line_batches():
    decoded_on: set[str] = set()

    def pixels(key: str) -> torch.Tensor:
        decoded_on.add(threading.current_thread().name)
        return torch.full((1, 3, 2, 2), float(int(key)))

    batches = [["1", "2", "3"], ["4"], ["5", "6"]]
    inline = list(_decoded(batches, pixels, prefetch=False))
    assert decoded_on == {threading.main_thread().name}
    ahead = list(_decoded(batches, pixels, prefetch=True))
    assert threading.main_thread().name in decoded_on and len(decoded_on) > 1
    assert [keys for keys, _ in ahead] == [keys for keys, _ in inline] == batches
    for (_, a), (_, b) in zip(ahead, inline, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert list(_decoded([], pixels, prefetch=True)) == []


def test_decoding_threads_only_where_a_core_is_free(monkeypatch):
    import os

    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr(os, "cpu_count", lambda: 4)
        torch.set_num_threads(4)
        assert not decode_threads_pay(torch.device("cpu"))
        torch.set_num_threads(2)
        assert decode_threads_pay(torch.device("cpu"))
        torch.set_num_threads(4)
        assert decode_threads_pay(torch.device("cuda"))
    finally:
        torch.set_num_threads(threads)
