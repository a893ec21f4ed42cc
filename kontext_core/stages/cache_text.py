"""cache_text: T5 (512 tokens) and CLIP pooled embeddings of every caption, content-addressed."""

from __future__ import annotations

from typing import Any

from kontext_core.fsutil import write_json
from kontext_core.model.source import model_inputs
from kontext_core.progress import progress
from kontext_core.stages.engine import StageContext, StageSpec
from kontext_core.stages.parallel import dask_client, encode_caption_batch

TEXT_CACHE_DIR = "cache/text"
TEXT_INDEX = f"{TEXT_CACHE_DIR}/index.json"
TEXT_EMBEDS = f"{TEXT_CACHE_DIR}/embeds"
# Captions per encoder call unless params say otherwise; outputs do not depend on it (bit-identical).
TEXT_BATCH_SIZE = 8


def text_batch_size(params: Any) -> int:
    """Captions per text-encoder call: SimpleTuner's `write_batch_size` when params carry it."""
    return int(getattr(params, "write_batch_size", None) or TEXT_BATCH_SIZE)


def stage_cache_text(ctx: StageContext) -> None:
    """T5 (`tokenizer_max_length`, 512 by default) and CLIP pooled embeddings of every caption, plus the empty caption.

    Missing captions are encoded in batches (every caption is padded to the same length, so a batch's
    rows are bit-identical to one-at-a-time embeddings: tests/integration/test_cache_batching.py).
    """
    from kontext_core.cache.s3_store import shared_cache
    from kontext_core.cache.store import BackgroundWriter, TensorStore
    from kontext_core.cache.text_cache import encode_captions, sequence_length
    from kontext_core.model.load import load_text_pipeline, release, training_device
    from kontext_core.model.source import model_fingerprint
    from kontext_core.stages.datasets import shared_cache_uri

    pairs = ctx.read_json("pair.pairs")
    # With an s3:// text-embed cache, what another machine encoded is downloaded, not encoded again.
    store = shared_cache(TensorStore(ctx.path(TEXT_EMBEDS)), shared_cache_uri(ctx.params, ctx.workdir, "text"))
    model_fp = model_fingerprint(ctx.params, ctx.workdir)
    reference_captions = {r["caption"] for p in pairs for r in p["references"] if r.get("caption") is not None}
    captions = sorted({p["caption"] for p in pairs} | reference_captions | {""})
    length = sequence_length(ctx.params)
    index = {c: TensorStore.key(caption=c, text=model_fp, length=length) for c in captions}
    todo = [c for c in captions if not store.has(index[c])]
    batch = text_batch_size(ctx.params)
    with dask_client(ctx.params) as client:
        if client is not None and todo:
            _encode_on_dask(client, ctx, todo, batch, index, store)
            write_json(ctx.path(TEXT_INDEX), index)
            ctx.info["encoded"] = len(todo)
            return
    pipe = load_text_pipeline(ctx.params, ctx.workdir).to(training_device()) if todo else None
    # Entries are written (and synced) on a thread while the next batch encodes.
    with (
        progress(len(todo), "cache_text", "caption") as bar,
        store.deferred_dir_sync(),
        BackgroundWriter(store) as writer,
    ):
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            embeds = encode_captions(pipe, chunk, length)
            writer.put_many([(index[caption], tensors) for caption, tensors in zip(chunk, embeds, strict=True)])
            bar.update(len(chunk))
    release(pipe.text_encoder if pipe else None, ctx.params)
    release(pipe.text_encoder_2 if pipe else None, ctx.params)
    write_json(ctx.path(TEXT_INDEX), index)
    ctx.info["encoded"] = len(todo)


def _encode_on_dask(
    client: Any, ctx: StageContext, todo: list[str], batch: int, index: dict[str, str], store: Any
) -> None:
    """The same caption batches encoded on the Dask workers; embeddings stored here."""
    import json

    import torch
    from dask.distributed import as_completed

    chunks = [todo[start : start + batch] for start in range(0, len(todo), batch)]
    futures = client.map(
        encode_caption_batch,
        chunks,
        params_json=json.dumps(ctx.params.model_dump(mode="json")),
        workdir=str(ctx.workdir),
        threads=torch.get_num_threads(),
        pure=False,
    )
    members = {future.key: chunk for future, chunk in zip(futures, chunks, strict=True)}
    with progress(len(todo), "cache_text (dask)", "caption") as bar, store.deferred_dir_sync():
        for future in as_completed(futures):
            chunk = members[future.key]
            for caption, tensors in zip(chunk, future.result(), strict=True):
                store.put(index[caption], tensors)
            bar.update(len(chunk))


SPEC = StageSpec(
    "cache_text",
    stage_cache_text,
    params_keys=["pretrained_model_name_or_path", "revision", "tokenizer_max_length"],
    reads=["pair.pairs"],
    outs=[],
    products={"index": TEXT_INDEX, "embeds": TEXT_EMBEDS},
    extra_inputs=model_inputs,
    persist=[TEXT_CACHE_DIR],
)
