"""init: the embedded tiny model and the sample data (both offline and deterministic)."""

from __future__ import annotations

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
    ctx.info["pretrain"] = save_pretrained_tiny(
        ctx.out(TINY_MODEL_DIR), samples, plan_from_params(p.tiny_model, sequence_length(p))
    )


SPEC = StageSpec(
    "init",
    stage_init,
    params_keys=["tiny_model", "sample_data", "tokenizer_max_length"],
    reads=[],
    outs=[TINY_MODEL_DIR, SAMPLE_DATA_DIR],
    products={"tiny_model": TINY_MODEL_DIR, "samples": SAMPLE_DATA_DIR},
)
