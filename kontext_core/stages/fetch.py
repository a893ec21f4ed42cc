"""fetch: normalised records per dataset (image reference, caption, key, header size), problems beside.

Records are streamed from each backend to `records.jsonl` as they are made (kontext_core.data.record_table).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kontext_core.config import DATASET_DEFAULT_KEYS, Params
from kontext_core.data.record_table import RECORDS_NAME, SUMMARY_NAME
from kontext_core.fsutil import sha256_file, write_json
from kontext_core.stages.datasets import dataset_file, load_checked_datasets, stage_datasets
from kontext_core.stages.engine import StageContext, StageSpec

log = logging.getLogger(__name__)

RECORDS_DIR = "data/fetch"
RECORDS_FILE = f"{RECORDS_DIR}/{RECORDS_NAME}"
# Per dataset: record count and where its lines lie in RECORDS_FILE; and the problems found.
SUMMARY_FILE = f"{RECORDS_DIR}/{SUMMARY_NAME}"
# The datasets' content identities: stages that decode pixels read them, so an image edited in place
# (same name, same size, so the same records and pairs) still re-runs them.
DIGESTS_FILE = f"{RECORDS_DIR}/digests.json"
SCAN_CACHE_DIR = "cache/scan"
DATASET_HASH_DIR = "cache/hashes/datasets"


def digest_memo(workdir: Path, dataset_id: str) -> Path:
    """Where a dataset's fingerprint remembers what it hashed (per file: path, size, mtime, SHA-256);
    fetch's records take their digests from it, so each image is read to be hashed once."""
    return workdir / DATASET_HASH_DIR / f"{dataset_id}.json"


def dataset_inputs(params: Params, workdir: Path) -> dict[str, Any]:
    """Content of the dataset file and of every dataset it names, as each backend identifies it.

    Local file hashes are remembered under cache/hashes/datasets by (path, size, mtime): a new
    process fingerprints an unchanged dataset with a stat per file instead of reading every image
    again. That memo is no stage's output (it changes whenever a fingerprint is taken).
    """
    from kontext_core.data.backends import backend_for

    hashes: dict[str, Any] = {"data_backend_config": sha256_file(dataset_file(params, workdir))}
    for entry in stage_datasets(params, workdir).enabled():
        if entry.dataset_type == "text_embeds":
            continue
        identity = backend_for(entry).fingerprint(entry, workdir, digest_memo(workdir, entry.id))
        if identity is not None:
            hashes[f"dataset:{entry.id}"] = identity
    return hashes


def stage_fetch(ctx: StageContext) -> None:
    """Normalised records per dataset: image reference, caption, key and header size; problems beside."""
    from kontext_core.data.backends import backend_for
    from kontext_core.data.scan import chunk_mapper
    from kontext_core.stages.parallel import DaskChunkMapper, dask_client

    with dask_client(ctx.params) as client:
        mapper = DaskChunkMapper(client) if client is not None else None
        with chunk_mapper(mapper):
            _fetch(ctx, backend_for)
    if mapper is not None:
        ctx.info["dask_scan_tasks"] = mapper.tasks


def _fetch(ctx: StageContext, backend_for: Any) -> None:
    from kontext_core.data.record_table import write_record_table
    from kontext_core.data.records import Problem, Record

    datasets = load_checked_datasets(ctx.params, ctx.workdir)
    scan_cache = ctx.path(SCAN_CACHE_DIR)
    scan_cache.mkdir(parents=True, exist_ok=True)
    entries = [entry for entry in datasets.enabled() if entry.dataset_type != "text_embeds"]
    # The datasets' identities first: the fingerprint's hashing pass, whose per-file digests (memo)
    # the records then carry; an unchanged dataset costs a stat per file here.
    digests = dataset_inputs(ctx.params, ctx.workdir)

    def stored(entry: Any) -> Iterator[Record | Problem]:
        backend = backend_for(entry)
        records = problems = 0
        for item in backend.stream(entry, ctx.workdir, scan_cache, digest_memo(ctx.workdir, entry.id)):
            if isinstance(item, Record):
                item.image = backend.stored_ref(item.image, ctx.to_stored)
                item.source = backend.stored_ref(item.source, ctx.to_stored)
                records += 1
            else:
                # Inside the project, a problem's path and message are stored relative to it too.
                item.path, item.reason = ctx.relative_text(item.path), ctx.relative_text(item.reason)
                problems += 1
            yield item
        log.info("fetch %s: %d records, %d problems", entry.id, records, problems)

    counts, problems = write_record_table(ctx.out(RECORDS_DIR), ((e.id, stored(e)) for e in entries))
    # Drop caches of datasets no longer configured, so the persisted store does not grow forever.
    for stale in [*scan_cache.glob("*.json"), *ctx.path(DATASET_HASH_DIR).glob("*.json")]:
        if stale.stem not in counts:
            stale.unlink()
    write_json(ctx.out(RECORDS_DIR) / "digests.json", digests)
    ctx.info["records"] = counts
    ctx.info["problems"] = len(problems)


SPEC = StageSpec(
    "fetch",
    stage_fetch,
    # Top-level dataset defaults (caption_strategy, instance_prompt, ...) change records too.
    params_keys=["data_backend_config", *DATASET_DEFAULT_KEYS],
    # The demo's datasets are init's sample data; a user's own folders are extra inputs.
    reads=["init.samples"],
    outs=[RECORDS_DIR],
    products={"records": RECORDS_FILE, "summary": SUMMARY_FILE, "digests": DIGESTS_FILE},
    extra_inputs=dataset_inputs,
    persist=[SCAN_CACHE_DIR],
)
