"""init: the embedded tiny model and the sample data (both offline and deterministic).

The tiny model is built (and pretrained) only when the params name it: with a hub id or another
folder as `pretrained_model_name_or_path`, its folder holds a note instead, and nothing else waits.
"""

from __future__ import annotations

import os
from pathlib import Path

from kontext_core.stages.engine import StageContext, StageSpec

TINY_MODEL_DIR = "models/tiny-kontext"
SAMPLE_DATA_DIR = "data/samples"


def stage_init(ctx: StageContext) -> None:
    """Build the embedded tiny model and the sample data (both offline and deterministic)."""
    from kontext_core.cache.text_cache import sequence_length
    from kontext_core.data.samples import write_sample_data
    from kontext_core.train.pretrain_tiny import plan_from_params, save_pretrained_tiny

    p = ctx.params
    samples = ctx.out(SAMPLE_DATA_DIR)
    samples.rmdir()
    write_sample_data(samples, count=p.sample_data.count, size=p.sample_data.size, seed=p.sample_data.seed)
    if not uses_tiny_model(p.pretrained_model_name_or_path, ctx.workdir):
        (ctx.out(TINY_MODEL_DIR) / "NOT_BUILT.txt").write_text(
            f"not built: pretrained_model_name_or_path is {p.pretrained_model_name_or_path!r}, not {TINY_MODEL_DIR!r}\n"
        )
        ctx.info["pretrain"] = "skipped"
        return
    ctx.info["pretrain"] = save_pretrained_tiny(
        ctx.out(TINY_MODEL_DIR), samples, plan_from_params(p.tiny_model, sequence_length(p))
    )


def uses_tiny_model(model: str, workdir: Path) -> bool:
    """Whether `pretrained_model_name_or_path` names the folder init builds."""
    path = Path(model).expanduser()
    named = os.path.normpath(path if path.is_absolute() else workdir / path)
    return named == os.path.normpath(workdir / TINY_MODEL_DIR)


SPEC = StageSpec(
    "init",
    stage_init,
    params_keys=["tiny_model", "sample_data", "tokenizer_max_length", "pretrained_model_name_or_path"],
    reads=[],
    outs=[TINY_MODEL_DIR, SAMPLE_DATA_DIR],
    products={"tiny_model": TINY_MODEL_DIR, "samples": SAMPLE_DATA_DIR},
)
