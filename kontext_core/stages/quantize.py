"""quantize: fuse QKV (optional), quantize + freeze the base transformer once (optimum-quanto), save it."""

from __future__ import annotations

from kontext_core.fsutil import write_json
from kontext_core.model.precision import quantize_inputs
from kontext_core.stages.engine import StageContext, StageSpec

QUANTIZED_DIR = "models/quantized"


def stage_quantize(ctx: StageContext) -> None:
    """Fuse QKV (optional), quantize + freeze the base transformer once (optimum-quanto) and save it."""
    import torch

    from kontext_core.model.fusion import fuse_qkv
    from kontext_core.model.load import base_dtype, load_transformer, training_device
    from kontext_core.model.quantize import quantize_transformer, quantized_module_names, save_quantized

    p = ctx.params
    out = ctx.out(QUANTIZED_DIR)
    write_json(
        out / "precision.json",
        {"base_model_precision": p.base_model_precision, "fuse_qkv_projections": p.fuse_qkv_projections},
    )
    if p.base_model_precision == "no_change":
        return
    model = load_transformer(p, ctx.workdir, dtype=base_dtype(p))
    if p.quantize_via == "accelerator":
        model = model.to(training_device())
    if p.fuse_qkv_projections:
        fuse_qkv(model)
    quantize_transformer(model, p.base_model_precision)
    save_quantized(model.to(torch.device("cpu")), out / "transformer", p.base_model_precision)
    ctx.info["quantized_modules"] = len(quantized_module_names(model))


SPEC = StageSpec(
    "quantize",
    stage_quantize,
    params_keys=[
        "pretrained_model_name_or_path",
        "base_model_precision",
        "quantize_via",
        "fuse_qkv_projections",
        "mixed_precision",
    ],
    reads=[],
    outs=[QUANTIZED_DIR],
    products={"model": QUANTIZED_DIR},
    extra_inputs=quantize_inputs,
    dvc_params=["revision"],
)
