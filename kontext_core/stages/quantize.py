"""quantize: fuse QKV (optional), quantize + freeze the base transformer once (optimum-quanto), save it.

It streams: the base weights are read, quantized and written one block at a time
(kontext_core.model.quantize.quantize_streaming), so host memory does not grow with the model's depth.
"""

from __future__ import annotations

from kontext_core.fsutil import write_json
from kontext_core.model.precision import quantize_inputs
from kontext_core.stages.engine import StageContext, StageSpec

QUANTIZED_DIR = "models/quantized"


def stage_quantize(ctx: StageContext) -> None:
    """Fuse QKV (optional), quantize + freeze the base transformer block by block and save it sharded."""
    import torch

    from kontext_core.model.load import base_dtype, training_device
    from kontext_core.model.quantize import quantize_streaming
    from kontext_core.model.weights import component_folder

    p = ctx.params
    out = ctx.out(QUANTIZED_DIR)
    write_json(
        out / "precision.json",
        {"base_model_precision": p.base_model_precision, "fuse_qkv_projections": p.fuse_qkv_projections},
    )
    if p.base_model_precision == "no_change":
        return
    device = training_device() if p.quantize_via == "accelerator" else torch.device("cpu")
    ctx.info["quantized_modules"] = quantize_streaming(
        component_folder(p, ctx.workdir, "transformer"),
        out / "transformer",
        p.base_model_precision,
        dtype=base_dtype(p),
        device=device,
        fuse=p.fuse_qkv_projections,
    )


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
    # On the GPU pool only when it quantizes there (the CPU pool quantizes otherwise).
    accelerator=lambda params: params.quantize_via == "accelerator",
)
