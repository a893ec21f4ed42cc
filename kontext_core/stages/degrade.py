"""degrade: generate the references of `conditioning: [...]` sets (content-addressed, resumable, parallel,
in worker processes or on a Dask cluster: kontext_core.stages.parallel)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kontext_core.data.pairing import DEGRADE_DIR
from kontext_core.stages.engine import StageContext, StageSpec
from kontext_core.stages.parallel import chunks, dask_client, generate_chunk

DEGRADE_CACHE_DIR = "cache/degrade"


def stage_degrade(ctx: StageContext) -> None:
    """Generate the references of `conditioning: [...]` sets (content-addressed, resumable, parallel)."""
    from kontext_core.data.generators import GenerationJob, generate_references

    pairs = ctx.read_json("pair.pairs")
    wanted: dict[str, GenerationJob] = {}
    for pair in pairs:
        for ref in pair["references"]:
            if ref["generated"]:
                generated = ref["generated"]
                spec = {k: v for k, v in generated.items() if k not in ("source", "source_digest")}
                wanted[ref["image"]] = GenerationJob.make(
                    generated["source"], spec, pair["key"], generated.get("source_digest")
                )
    jobs = sorted(set(wanted.values()), key=lambda j: (j.source, j.spec_json))
    with dask_client(ctx.params) as client:
        if client is None:
            files, made = generate_references(jobs, ctx.workdir, ctx.params.seed, ctx.path(DEGRADE_CACHE_DIR))
        else:
            files, made = _generate_on_dask(client, jobs, ctx)
    out = ctx.out(DEGRADE_DIR)
    for rel, job in sorted(wanted.items()):
        dest = out / Path(rel).relative_to(DEGRADE_DIR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(files[job], dest)
        except OSError:
            shutil.copyfile(files[job], dest)
    ctx.info.update({"generated": made, "reused": len(wanted) - made})


def _generate_on_dask(client: Any, jobs: list[Any], ctx: StageContext) -> tuple[dict[Any, Path], int]:
    """The jobs not in the persistent cache yet, in chunks on the Dask workers (same calls, same bytes)."""
    from dask.distributed import as_completed

    from kontext_core.data.generators import output_path
    from kontext_core.progress import progress

    persist = ctx.path(DEGRADE_CACHE_DIR)
    files = {job: output_path(job, persist, ctx.workdir, ctx.params.seed) for job in jobs}
    todo = [job for job in jobs if not files[job].exists()]
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    pieces = chunks(todo, 4 * workers)
    futures = client.map(
        generate_chunk,
        pieces,
        workdir=str(ctx.workdir),
        seed=ctx.params.seed,
        persist_dir=str(persist),
        pure=False,
    )
    sizes = {future.key: len(piece) for future, piece in zip(futures, pieces, strict=True)}
    with progress(len(todo), "degrade (dask)", "image") as bar:
        for future in as_completed(futures):
            future.result()
            bar.update(sizes[future.key])
    return files, len(todo)


SPEC = StageSpec(
    "degrade",
    stage_degrade,
    params_keys=["seed"],
    reads=["pair.pairs", "fetch.digests"],
    outs=[DEGRADE_DIR],
    products={"references": DEGRADE_DIR},
    persist=[DEGRADE_CACHE_DIR],
)
