"""degrade: generate the references of `conditioning: [...]` sets (content-addressed, resumable, parallel)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kontext_core.data.pairing import DEGRADE_DIR
from kontext_core.stages.engine import StageContext, StageSpec

DEGRADE_CACHE_DIR = "cache/degrade"


def stage_degrade(ctx: StageContext) -> None:
    """Generate the references of `conditioning: [...]` sets (content-addressed, resumable, parallel)."""
    from kontext_core.data.generators import GenerationJob, generate_references

    pairs = ctx.read_json("pair.pairs")
    wanted: dict[str, GenerationJob] = {}
    for pair in pairs:
        for ref in pair["references"]:
            if ref["generated"]:
                spec = {k: v for k, v in ref["generated"].items() if k != "source"}
                wanted[ref["image"]] = GenerationJob.make(ref["generated"]["source"], spec, pair["key"])
    files, made = generate_references(
        sorted(set(wanted.values()), key=lambda j: (j.source, j.spec_json)),
        ctx.workdir,
        ctx.params.seed,
        ctx.path(DEGRADE_CACHE_DIR),
    )
    out = ctx.out(DEGRADE_DIR)
    for rel, job in sorted(wanted.items()):
        dest = out / Path(rel).relative_to(DEGRADE_DIR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(files[job], dest)
        except OSError:
            shutil.copyfile(files[job], dest)
    ctx.info.update({"generated": made, "reused": len(wanted) - made})


SPEC = StageSpec(
    "degrade",
    stage_degrade,
    params_keys=["seed"],
    reads=["pair.pairs", "fetch.digests"],
    outs=[DEGRADE_DIR],
    products={"references": DEGRADE_DIR},
    persist=[DEGRADE_CACHE_DIR],
)
