"""cache_vae: VAE latents of every target and reference, cropped by their plans, content-addressed."""

from __future__ import annotations

from typing import Any

from kontext_core.fsutil import write_json
from kontext_core.model.source import model_inputs
from kontext_core.stages.engine import StageContext, StageSpec

VAE_CACHE_DIR = "cache/vae"
VAE_INDEX = f"{VAE_CACHE_DIR}/index.json"
VAE_LATENTS = f"{VAE_CACHE_DIR}/latents"


def _vae_key(ctx: StageContext, image: str, plan: dict[str, Any], model_fp: Any) -> str:
    from kontext_core.cache.store import TensorStore
    from kontext_core.data.sources import ref_digest

    return TensorStore.key(image=ref_digest(image, ctx.workdir), crop=plan, vae=model_fp)


def _crop_of(item: dict[str, Any]) -> dict[str, Any]:
    """The crop plan of a pair-table image (tables without plans: centre crop to its size)."""
    return item.get("crop") or {"size": item["size"], "centre": True}


def stage_cache_vae(ctx: StageContext) -> None:
    """VAE latents of every target and reference, cropped by their plans, content-addressed under cache/vae."""
    import torch

    from kontext_core.cache.store import TensorStore
    from kontext_core.cache.vae_cache import encode_image
    from kontext_core.data.buckets import apply_crop, resize_and_crop
    from kontext_core.data.sources import open_ref
    from kontext_core.model.load import load_vae, release, training_device
    from kontext_core.model.source import model_fingerprint

    pairs = ctx.read_json("pair.pairs")
    store = TensorStore(ctx.path(VAE_LATENTS))
    model_fp = model_fingerprint(ctx.params, ctx.workdir)
    vae = None
    index: dict[str, dict[str, Any]] = {}
    encoded = 0
    for pair in pairs:
        entry: dict[str, Any] = {"target": None, "references": []}
        items = [("target", pair["target"], _crop_of(pair))] + [
            ("reference", r["image"], _crop_of(r)) for r in pair["references"]
        ]
        for role, image, plan in items:
            key = _vae_key(ctx, image, plan, model_fp)
            if not store.has(key):
                if vae is None:
                    vae = load_vae(ctx.params, ctx.workdir).to(training_device())
                img = open_ref(image, ctx.workdir)
                img = resize_and_crop(img, tuple(plan["size"])) if plan.get("centre") else apply_crop(img, plan)
                store.put(key, {"latents": encode_image(vae, img).to(torch.float32)})
                encoded += 1
            if role == "target":
                entry["target"] = key
            else:
                entry["references"].append(key)
        index[pair["pair_id"]] = entry
    release(vae, ctx.params)
    write_json(ctx.path(VAE_INDEX), index)
    ctx.info["encoded"] = encoded


SPEC = StageSpec(
    "cache_vae",
    stage_cache_vae,
    params_keys=["pretrained_model_name_or_path", "revision"],
    # Generated references are opened through the pair table's paths into degrade's output.
    reads=["pair.pairs", "degrade.references", "fetch.digests"],
    outs=[],
    products={"index": VAE_INDEX, "latents": VAE_LATENTS},
    extra_inputs=model_inputs,
    persist=[VAE_CACHE_DIR],
)
