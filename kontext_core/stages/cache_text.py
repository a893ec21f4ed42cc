"""cache_text: T5 (512 tokens) and CLIP pooled embeddings of every caption, content-addressed."""

from __future__ import annotations

import logging
from typing import Any

from kontext_core.fsutil import write_json
from kontext_core.lifecycle import check_stop
from kontext_core.model.source import model_inputs
from kontext_core.progress import progress
from kontext_core.stages.engine import StageContext, StageSpec
from kontext_core.stages.parallel import dask_client, encode_caption_batch

log = logging.getLogger(__name__)

TEXT_CACHE_DIR = "cache/text"
TEXT_INDEX = f"{TEXT_CACHE_DIR}/index.json"
TEXT_EMBEDS = f"{TEXT_CACHE_DIR}/embeds"
# Captions per encoder call unless params say otherwise; outputs do not depend on it (bit-identical).
TEXT_BATCH_SIZE = 8
# Captions tokenized per tokenizer call: few calls, and at most this many rows of ids held at once.
TOKENIZE_BLOCK = 1024


def text_batch_size(params: Any) -> int:
    """Captions per text-encoder call: SimpleTuner's `write_batch_size` when params carry it."""
    return int(getattr(params, "write_batch_size", None) or TEXT_BATCH_SIZE)


def stage_cache_text(ctx: StageContext) -> None:
    """T5 (`tokenizer_max_length`, 512 by default) and CLIP pooled embeddings of every caption, plus the empty caption.

    Missing captions are tokenized a block at a time and encoded in batches (every caption is padded
    to the same length, so a batch's rows are bit-identical to one-at-a-time `encode_prompt`
    embeddings: tests/integration/test_cache_batching.py). Captions cut at the encoders' lengths are
    reported once.
    """
    from kontext_core.cache.s3_store import shared_cache
    from kontext_core.cache.store import CacheWriter, TensorStore
    from kontext_core.cache.text_cache import cut_captions, encode_token_ids, sequence_length, tokenize_captions
    from kontext_core.model.load import load_text_pipeline, release, training_device
    from kontext_core.model.source import model_fingerprint
    from kontext_core.stages.datasets import shared_cache_uri

    pairs = ctx.read_json("pair.pairs")
    # With an s3:// text-embed cache, what another machine encoded is downloaded, not encoded again.
    # Reused entries are checked against the digests the last run recorded (a flipped byte is re-encoded).
    local = TensorStore(ctx.path(TEXT_EMBEDS), ctx.recorded_digests(TEXT_EMBEDS))
    store = shared_cache(local, shared_cache_uri(ctx.params, ctx.workdir, "text"))
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
    cut: dict[str, list[str]] = {"clip": [], "t5": []}  # the captions each encoder cuts short
    with (
        progress(len(todo), "cache_text", "caption") as bar,
        store.deferred_dir_sync(),
        CacheWriter(store) as writer,
    ):
        for block_start in range(0, len(todo), TOKENIZE_BLOCK):
            block = todo[block_start : block_start + TOKENIZE_BLOCK]
            clip_ids, t5_ids = tokenize_captions(pipe, block, length)
            for name, cut_here in cut_captions(pipe, block, length).items():
                cut[name] += cut_here
            for start in range(0, len(block), batch):
                chunk = block[start : start + batch]
                check_stop(f"cache_text after {block_start + start} of {len(todo)} captions")
                embeds = encode_token_ids(pipe, clip_ids[start : start + batch], t5_ids[start : start + batch])
                writer.put_many([(index[caption], tensors) for caption, tensors in zip(chunk, embeds, strict=True)])
                bar.update(len(chunk))
    if pipe is not None:
        _report_cut_captions(cut, len(todo), pipe.tokenizer_max_length, length)
    release(pipe.text_encoder if pipe else None, ctx.params)
    release(pipe.text_encoder_2 if pipe else None, ctx.params)
    write_json(ctx.path(TEXT_INDEX), index)
    ctx.info["encoded"] = len(todo)


def _report_cut_captions(cut: dict[str, list[str]], total: int, clip_length: int, t5_length: int) -> None:
    """One warning per text encoder that cut captions short, with how many and an example (instead
    of `encode_prompt`'s warning per batch)."""
    limits = {"clip": f"CLIP's {clip_length} tokens", "t5": f"the T5 length {t5_length} (tokenizer_max_length)"}
    for name, captions in cut.items():
        if captions:
            log.warning(
                "cache_text: %d of %d captions are longer than %s and are cut there, e.g. %r",
                len(captions), total, limits[name], captions[0][:120],
            )


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
    params_keys=["pretrained_model_name_or_path", "tokenizer_max_length"],
    reads=["pair.pairs"],
    outs=[],
    products={"index": TEXT_INDEX, "embeds": TEXT_EMBEDS},
    extra_inputs=model_inputs,
    dvc_params=["revision"],
    persist=[TEXT_CACHE_DIR],
)
