"""Training-step throughput and peak memory of the full-size FLUX.1 Kontext transformer.

Builds FluxTransformer2DModel with the real FLUX.1 Kontext [dev] config and random weights (nothing is
downloaded): constructed on the meta device and materialised directly on the GPU in bf16 (no 24 GB
CPU init), quantized with optimum-quanto through the project's own `quantize_transformer`, a LoRA
attached with the project's `add_adapter`, gradient checkpointing on, and timed through the project's
Kontext step (`kontext_core.model.kontext_step`): one target and one same-size reference image, a
512-token T5 sequence, AdamW on the adapter.

    python bench/gpu_step.py                          # 512 and 1024 px, int8-quanto, LoRA rank 16
    python bench/gpu_step.py --device cpu --tiny      # smoke run of the same code on the tiny geometry

Prints one line per resolution: it/s, seconds per step and peak GPU memory (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import torch

# FLUX.1 Kontext [dev]'s transformer/config.json values.
FULL_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
T5_TOKENS = 512


@dataclass
class Result:
    resolution: int
    steps: int
    it_per_s: float
    s_per_step: float
    peak_gpu_gib: float | None
    loss: float


def build_transformer(config: dict, device: torch.device, dtype: torch.dtype, seed: int):
    """Random weights, allocated once on `device` (meta construction, then `to_empty` + normal init)."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
    model = model.to(dtype=dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:  # norm scales
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return model.eval().requires_grad_(False)


def step_inputs(resolution: int, config: dict, device: torch.device, dtype: torch.dtype, seed: int):
    from kontext_core.model.kontext_step import StepInputs

    g = torch.Generator(device=device).manual_seed(seed)
    side = resolution // 8  # VAE latent grid; 2x2 packing happens inside the step
    tokens = T5_TOKENS if config is FULL_CONFIG else 16
    inputs = StepInputs(
        target_latents=torch.randn(1, 16, side, side, generator=g, device=device, dtype=dtype),
        reference_latents=[torch.randn(1, 16, side, side, generator=g, device=device, dtype=dtype)],
        prompt_embeds=torch.randn(1, tokens, config["joint_attention_dim"], generator=g, device=device, dtype=dtype),
        pooled_prompt_embeds=torch.randn(1, config["pooled_projection_dim"], generator=g, device=device, dtype=dtype),
    )
    noise = torch.randn(inputs.target_latents.shape, generator=g, device=device, dtype=dtype)
    return inputs, noise


def run(args: argparse.Namespace) -> list[Result]:
    from kontext_core.config import Params
    from kontext_core.model.adapter_kinds import add_adapter
    from kontext_core.model.kontext_step import kontext_step
    from kontext_core.model.quantize import quantize_transformer
    from kontext_core.model.tiny import TINY_TRANSFORMER_CONFIG

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = TINY_TRANSFORMER_CONFIG if args.tiny else FULL_CONFIG
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    transformer = build_transformer(config, device, dtype, args.seed)
    quantize_transformer(transformer, args.precision)
    if args.checkpointing:
        transformer.enable_gradient_checkpointing()
    adapter = add_adapter(transformer, Params(lora_rank=args.rank, base_model_precision=args.precision))
    for p in adapter.parameters():
        p.data = p.data.float()  # trainable adapter weights in fp32, like the trainer's
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    transformer.train()
    print(
        f"model ready in {time.perf_counter() - started:.1f}s: {'tiny' if args.tiny else 'full-size'} transformer, "
        f"{args.precision}, LoRA rank {args.rank}, gradient checkpointing {'on' if args.checkpointing else 'off'}, "
        f"{sum(p.numel() for p in adapter.parameters()) / 1e6:.2f}M trainable, device {device}",
        flush=True,
    )
    results = []
    for resolution in args.resolutions:
        inputs, noise = step_inputs(resolution, config, device, dtype, args.seed)
        sigmas = torch.full((1,), 0.5, device=device)

        def one_step(inputs=inputs, noise=noise, sigmas=sigmas) -> float:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = kontext_step(transformer, inputs, noise, sigmas, 1.0)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(out.loss.detach())

        for _ in range(args.warmup):
            one_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        loss = 0.0
        for _ in range(args.steps):
            loss = one_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        result = Result(resolution, args.steps, args.steps / elapsed, elapsed / args.steps, peak, loss)
        results.append(result)
        peak_text = f"{peak:.2f} GiB" if peak is not None else "n/a (cpu)"
        print(
            f"{resolution} px: {result.it_per_s:.3f} it/s ({result.s_per_step:.3f} s/step), "
            f"peak GPU memory {peak_text}, loss {loss:.4f}",
            flush=True,
        )
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (only with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="the tiny geometry: a smoke run of the same code")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None, help="default 512 1024 (64 with --tiny)")
    parser.add_argument("--precision", default="int8-quanto", help="base_model_precision (default int8-quanto)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per resolution")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.resolutions is None:
        args.resolutions = [64] if args.tiny else [512, 1024]
    if any(r % 16 for r in args.resolutions):
        parser.error("--resolutions: edges must be multiples of 16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_step: no CUDA device; this benchmark measures the full-size model on a GPU. "
            "Run `python bench/gpu_step.py --device cpu --tiny` for a CPU smoke run of the same code.",
            file=sys.stderr,
        )
        return 2
    if args.device == "cpu" and not args.tiny:
        print("gpu_step: the full-size model on a CPU is not a benchmark; add --tiny for a smoke run.", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}", flush=True)
    results = run(args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": [asdict(r) for r in results]}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
