"""cache_text: T5 (512 tokens) and CLIP pooled embeddings of every caption, content-addressed."""

from __future__ import annotations

from kontext_core.fsutil import write_json
from kontext_core.model.source import model_inputs
from kontext_core.stages.engine import StageContext, StageSpec

TEXT_CACHE_DIR = "cache/text"
TEXT_INDEX = f"{TEXT_CACHE_DIR}/index.json"
TEXT_EMBEDS = f"{TEXT_CACHE_DIR}/embeds"


def stage_cache_text(ctx: StageContext) -> None:
    """T5 (512 tokens) and CLIP pooled embeddings of every caption, plus the empty caption."""
    from kontext_core.cache.store import TensorStore
    from kontext_core.cache.text_cache import MAX_SEQUENCE_LENGTH, encode_caption
    from kontext_core.model.load import load_text_pipeline, release, training_device
    from kontext_core.model.source import model_fingerprint

    pairs = ctx.read_json("pair.pairs")
    store = TensorStore(ctx.path(TEXT_EMBEDS))
    model_fp = model_fingerprint(ctx.params, ctx.workdir)
    reference_captions = {r["caption"] for p in pairs for r in p["references"] if r.get("caption") is not None}
    captions = sorted({p["caption"] for p in pairs} | reference_captions | {""})
    pipe = None
    index: dict[str, str] = {}
    encoded = 0
    for caption in captions:
        key = TensorStore.key(caption=caption, text=model_fp, length=MAX_SEQUENCE_LENGTH)
        if not store.has(key):
            if pipe is None:
                pipe = load_text_pipeline(ctx.params, ctx.workdir).to(training_device())
            store.put(key, encode_caption(pipe, caption))
            encoded += 1
        index[caption] = key
    release(pipe.text_encoder if pipe else None, ctx.params)
    release(pipe.text_encoder_2 if pipe else None, ctx.params)
    write_json(ctx.path(TEXT_INDEX), index)
    ctx.info["encoded"] = encoded


SPEC = StageSpec(
    "cache_text",
    stage_cache_text,
    params_keys=["pretrained_model_name_or_path", "revision"],
    reads=["pair.pairs"],
    outs=[],
    products={"index": TEXT_INDEX, "embeds": TEXT_EMBEDS},
    extra_inputs=model_inputs,
    persist=[TEXT_CACHE_DIR],
)
