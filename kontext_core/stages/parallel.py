"""Per-file work of the data stages on a Dask cluster (dask.distributed), or in this process.

fetch (header probes of local folders), degrade (reference generation), cache_vae (VAE batches) and
cache_text (caption batches) use it.

`dask.address` in params.yaml picks the engine: null (the default) runs every stage's per-file work
in the stage's own process as always; `local` starts a LocalCluster of `dask.workers` worker
processes on this machine for the stage; `tcp://host:8786` uses a running cluster (its workers need
the project folder at the same path and this package installed). The outputs are byte for byte the
same: degrade's images are generated per job exactly as in process, and cache_vae's batches have the
same members, size, padding and torch thread count; only where they are computed changes. The engine is no stage input:
switching it re-runs nothing.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kontext_core.config import Params

# One LocalCluster per process and worker count, started by the first stage that asks and shared by
# the next (degrade, then cache_vae): its workers keep torch and the VAE imported. Closed at exit.
_LOCAL: dict[int, tuple[Any, Any]] = {}
_LOCAL_LOCK = threading.Lock()


def _close_local() -> None:
    for cluster, client in _LOCAL.values():
        client.close()
        cluster.close()
    _LOCAL.clear()


@contextmanager
def _environ_kept() -> Iterator[None]:
    """Undo what Dask's nanny writes into this process's environment before it spawns a worker
    (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, PYTHONHASHSEED, ...; it never restores them): every
    later subprocess, such as `accelerate launch` for train, would inherit one thread, run slower
    and compute other bytes than a run without Dask. The workers keep the settings they spawned with."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def _local_client(params: Params) -> Any:
    from dask.distributed import Client, LocalCluster

    workers = params.dask.workers
    with _LOCAL_LOCK:
        if workers not in _LOCAL:
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                env={"KONTEXT_PROGRESS": "off"},
            )
            if not _LOCAL:
                atexit.register(_close_local)
            _LOCAL[workers] = (cluster, Client(cluster, timeout=params.dask.connect_timeout_seconds))
        return _LOCAL[workers][1]


@contextmanager
def dask_client(params: Params) -> Iterator[Any | None]:
    """A dask.distributed Client for `dask.address`, or None for the in-process path."""
    address = params.dask.address
    if not address:
        yield None
        return
    if address == "local":
        # Around the cluster's start and the stage's use: the nanny writes them again when it restarts a worker.
        with _environ_kept():
            yield _local_client(params)
        return
    from dask.distributed import Client

    client = Client(address, timeout=params.dask.connect_timeout_seconds)
    try:
        yield client
    finally:
        client.close()


class DaskChunkMapper:
    """The fetch stage's header probes as Dask tasks (kontext_core.data.scan.chunk_mapper); counts them."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.tasks = 0

    def __call__(self, fn: Any, parts: list[list[str]], max_pixels: int | None) -> Iterator[list]:
        futures = self.client.map(fn, parts, [max_pixels] * len(parts), pure=False)
        self.tasks += len(futures)
        for future in futures:
            yield future.result()


def chunks(items: list[Any], count: int) -> list[list[Any]]:
    """`items` in about `count` contiguous pieces (order kept), none empty."""
    size = max(1, -(-len(items) // max(1, count)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def generate_chunk(jobs: list[Any], workdir: str, seed: int, persist_dir: str) -> int:
    """A Dask task of degrade: the same generator calls as in process, one job after another."""
    from kontext_core.data.generators import generate_references

    _, made = generate_references(jobs, Path(workdir), seed, Path(persist_dir), workers=1)
    return made


@functools.lru_cache(maxsize=2)
def _worker_vae(params_json: str, workdir: str) -> Any:
    """The VAE, loaded once per worker process and project."""
    from kontext_core.model.load import load_vae, training_device

    params = Params.model_validate(json.loads(params_json))
    return load_vae(params, Path(workdir)).to(training_device())


def encode_batch(
    items: list[tuple[str, dict[str, Any], str | None]], params_json: str, workdir: str, batch: int, threads: int
) -> Any:
    """A Dask task of cache_vae: one batch exactly as the stage encodes it in process (same members,
    padded to `batch` with copies of the last image); the float32 latents of the real members.

    `threads` is the stage process's torch thread count: CPU convolutions round differently with
    another intra-op thread count (by ~1e-7), so the worker computes with the same one.
    """
    import torch

    torch.set_num_threads(threads)

    from kontext_core.cache.vae_cache import encode_pixels, image_to_tensor
    from kontext_core.data.buckets import apply_crop, resize_and_crop
    from kontext_core.data.sources import open_verified

    torch.set_grad_enabled(False)
    images = []
    for image, plan, digest in items:
        img = open_verified(image, Path(workdir), digest)
        img = resize_and_crop(img, tuple(plan["size"])) if plan.get("centre") else apply_crop(img, plan)
        images.append(image_to_tensor(img))
    images += images[-1:] * (batch - len(images))
    latents = encode_pixels(_worker_vae(params_json, workdir), torch.cat(images))
    return latents[: len(items)].to(torch.float32).cpu().numpy()


@functools.lru_cache(maxsize=2)
def _worker_text_pipeline(params_json: str, workdir: str) -> Any:
    """The text encoders, loaded once per worker process and project."""
    from kontext_core.model.load import load_text_pipeline, training_device

    params = Params.model_validate(json.loads(params_json))
    return load_text_pipeline(params, Path(workdir)).to(training_device())


def encode_caption_batch(captions: list[str], params_json: str, workdir: str, threads: int) -> list[dict[str, Any]]:
    """A Dask task of cache_text: one batch of captions as the stage encodes it in process."""
    import torch

    from kontext_core.cache.text_cache import encode_captions, sequence_length

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    pipe = _worker_text_pipeline(params_json, workdir)
    length = sequence_length(Params.model_validate(json.loads(params_json)))
    encoded = encode_captions(pipe, captions, length)
    return [{name: tensor.cpu() for name, tensor in tensors.items()} for tensors in encoded]
