"""cache_vae: VAE latents of every target and reference, cropped by their plans, content-addressed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kontext_core.fsutil import write_json
from kontext_core.lifecycle import check_stop
from kontext_core.model.source import model_inputs
from kontext_core.progress import progress, track
from kontext_core.stages.datasets import shared_cache_uri
from kontext_core.stages.engine import StageContext, StageSpec
from kontext_core.stages.parallel import dask_client, encode_batch

VAE_CACHE_DIR = "cache/vae"
VAE_INDEX = f"{VAE_CACHE_DIR}/index.json"
VAE_LATENTS = f"{VAE_CACHE_DIR}/latents"
# Images per encode call unless params say otherwise; outputs do not depend on it (bit-identical).


def _vae_key(
    ctx: StageContext, image: str, plan: dict[str, Any], model_fp: Any, batch: int = 1, digest: str | None = None
) -> str:
    from kontext_core.cache.store import TensorStore
    from kontext_core.data.sources import ref_digest

    # The digest the tables recorded (fetch hashed the image once); an image without one is asked for.
    parts: dict[str, Any] = {"image": ref_digest(image, ctx.workdir, digest), "crop": plan, "vae": model_fp}
    if batch != 1:
        # A batched encode rounds differently from a single one (within 1e-6; convolution kernels are
        # chosen per batch size), so the size is part of what determines the bytes. Batch 1 keeps
        # the keys of caches written before batching.
        parts["batch"] = batch
    return TensorStore.key(**parts)


def recorded_file_digests(ctx: StageContext, product: str) -> dict[str, str]:
    """{project-relative file: sha256} of an upstream product's files as its stage's manifest recorded
    them (degrade's generated references): keys made from them need no read of the images."""
    from kontext_core.stages.engine import read_manifest

    stage, rel = product.split(".", 1)[0], ctx.inputs[product]
    files = ((read_manifest(ctx.workdir, stage) or {}).get("files") or {}).get(rel) or {}
    return {(rel if sub == "." else f"{rel}/{sub}"): digest for sub, (_, digest) in files.items()}


def _crop_of(item: dict[str, Any]) -> dict[str, Any]:
    """The crop plan of a pair-table image (tables without plans: centre crop to its size)."""
    return item.get("crop") or {"size": item["size"], "centre": True}


def vae_batch_size(params: Any) -> int:
    """Images per `vae.encode` call (SimpleTuner's `vae_batch_size`)."""
    return int(params.vae_batch_size)


def _out_size(plan: dict[str, Any]) -> tuple[int, int]:
    """(width, height) of an image after its crop plan: the bucket its latents belong to."""
    if plan.get("centre"):
        return tuple(plan["size"])  # type: ignore[return-value]
    left, top, right, bottom = plan["box"]
    return right - left, bottom - top


def stage_cache_vae(ctx: StageContext) -> None:
    """VAE latents of every target and reference, cropped by their plans, content-addressed under cache/vae.

    Missing entries are encoded by bucket in batches of exactly `vae_batch_size` (a bucket's last
    batch is padded with copies of its last image). A thread writes the entries (`CacheWriter`);
    where decoding threads pay (`decode_threads_pay`: a GPU, or a CPU core torch leaves free) two
    threads decode and crop the next batch while this one encodes, otherwise decoding runs in line.
    An image's latents depend on the batch size only, not on its neighbours or its place in the
    batch, so a resumed run writes the same bytes as a fresh one (tests/integration/test_cache_batching.py).
    """
    import torch

    from kontext_core.cache.s3_store import shared_cache
    from kontext_core.cache.store import CacheWriter, TensorStore
    from kontext_core.cache.vae_cache import encode_pixels, image_to_tensor
    from kontext_core.data.buckets import apply_crop, resize_and_crop
    from kontext_core.data.sources import open_verified
    from kontext_core.model.load import load_vae, release, training_device
    from kontext_core.model.source import model_fingerprint

    pairs = ctx.read_json("pair.pairs")
    # With an s3:// cache_dir_vae, entries another machine encoded are downloaded, not encoded again.
    # Reused entries are checked against the digests the last run recorded (a flipped byte is re-encoded).
    local = TensorStore(ctx.path(VAE_LATENTS), ctx.recorded_digests(VAE_LATENTS))
    store = shared_cache(local, shared_cache_uri(ctx.params, ctx.workdir, "vae"))
    model_fp = model_fingerprint(ctx.params, ctx.workdir)
    batch = vae_batch_size(ctx.params)
    # Generated references' digests as degrade recorded them; dataset images' travel in the pair table.
    generated = recorded_file_digests(ctx, "degrade.references")
    index: dict[str, dict[str, Any]] = {}
    # key -> (image, plan, recorded digest) of every entry not in the store yet, each once.
    todo: dict[str, tuple[str, dict[str, Any], str | None]] = {}
    for pair in track(pairs, "cache_vae keys", unit="pair"):
        entry: dict[str, Any] = {"target": None, "references": []}
        items = [("target", pair["target"], _crop_of(pair), pair.get("digest"))] + [
            ("reference", r["image"], _crop_of(r), r.get("digest") or generated.get(r["image"]))
            for r in pair["references"]
        ]
        for role, image, plan, digest in items:
            key = _vae_key(ctx, image, plan, model_fp, batch, digest)
            if key not in todo and not store.has(key):
                todo[key] = (image, plan, digest)
            if role == "target":
                entry["target"] = key
            else:
                entry["references"].append(key)
        index[pair["pair_id"]] = entry

    def pixels(key: str) -> torch.Tensor:
        image, plan, digest = todo[key]
        # Stored under a key made from `digest`: an image changed since it was recorded is refused.
        img = open_verified(image, ctx.workdir, digest)
        img = resize_and_crop(img, tuple(plan["size"])) if plan.get("centre") else apply_crop(img, plan)
        return image_to_tensor(img)

    by_bucket: dict[tuple[int, int], list[str]] = {}
    for key, (_, plan, _) in todo.items():
        by_bucket.setdefault(_out_size(plan), []).append(key)
    batches = [keys[i : i + batch] for keys in by_bucket.values() for i in range(0, len(keys), batch)]
    with dask_client(ctx.params) as client:
        if client is not None and batches:
            _encode_on_dask(client, ctx, batches, todo, batch, store)
            batches = []
    device = training_device()
    vae = load_vae(ctx.params, ctx.workdir).to(device) if batches else None
    # The writer (listed last) is drained first on the way out, then the shard folders are synced.
    with (
        progress(len(todo), "cache_vae", "image") as bar,
        store.deferred_dir_sync(),
        CacheWriter(store) as writer,
    ):
        for keys, images in _decoded(batches, pixels, prefetch=decode_threads_pay(device)):
            check_stop(f"cache_vae after {bar.n} of {len(todo)} images")
            images += images[-1:] * (batch - len(images))
            latents = encode_pixels(vae, torch.cat(images))
            rows = zip(keys, latents[: len(keys)], strict=True)
            writer.put_many([(key, {"latents": latent.to(torch.float32)}) for key, latent in rows])
            bar.update(len(keys))
    release(vae, ctx.params)
    write_json(ctx.path(VAE_INDEX), index)
    ctx.info["encoded"] = len(todo)


def decode_threads_pay(device: Any) -> bool:
    """Whether decoding on threads beside the encoder speeds cache_vae up: yes on an accelerator or
    when torch leaves a CPU core free. No when torch's threads take every core: a decoding thread
    then preempts one of them and each parallel region waits for it (measured on 2 cores, 4,000
    images: two decoding threads cost 15 % more than decoding in line; docs/benchmarks.md)."""
    import os

    import torch

    return device.type != "cpu" or (os.cpu_count() or 1) > torch.get_num_threads()


def _decoded(batches: list[list[str]], pixels: Any, prefetch: bool) -> Iterator[tuple[list[str], list[Any]]]:
    """(keys, pixel tensors) of each batch in order: decoded in line, or by two threads one batch ahead."""
    if not prefetch:
        for keys in batches:
            yield keys, [pixels(key) for key in keys]
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as decoder:
        ahead = decoder.map(pixels, batches[0]) if batches else None
        for number, keys in enumerate(batches):
            current = ahead
            ahead = decoder.map(pixels, batches[number + 1]) if number + 1 < len(batches) else None
            yield keys, list(current)


def _encode_on_dask(
    client: Any,
    ctx: StageContext,
    batches: list[list[str]],
    todo: dict[str, tuple[str, dict[str, Any], str | None]],
    batch: int,
    store: Any,
) -> None:
    """The same batches encoded on the Dask workers (each loads the VAE once); latents stored here."""
    import json

    import torch
    from dask.distributed import as_completed

    params_json = json.dumps(ctx.params.model_dump(mode="json"))
    futures = client.map(
        encode_batch,
        [[todo[key] for key in keys] for keys in batches],
        params_json=params_json,
        workdir=str(ctx.workdir),
        batch=batch,
        threads=torch.get_num_threads(),
        pure=False,
    )
    members = {future.key: keys for future, keys in zip(futures, batches, strict=True)}
    with progress(len(todo), "cache_vae (dask)", "image") as bar, store.deferred_dir_sync():
        for future in as_completed(futures):
            keys = members[future.key]
            for key, latent in zip(keys, future.result(), strict=True):
                store.put(key, {"latents": torch.from_numpy(latent)})
            bar.update(len(keys))


SPEC = StageSpec(
    "cache_vae",
    stage_cache_vae,
    params_keys=["pretrained_model_name_or_path", "vae_batch_size"],
    # Generated references are opened through the pair table's paths into degrade's output.
    reads=["pair.pairs", "degrade.references", "fetch.digests"],
    outs=[],
    products={"index": VAE_INDEX, "latents": VAE_LATENTS},
    extra_inputs=model_inputs,
    dvc_params=["revision"],
    persist=[VAE_CACHE_DIR],
)
