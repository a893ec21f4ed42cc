"""Training-step throughput and peak memory of the full-size FLUX.1 Kontext transformer.

Builds FluxTransformer2DModel with the real FLUX.1 Kontext [dev] config and random weights (nothing is
downloaded): constructed on the meta device and materialised directly on the GPU in bf16 (no 24 GB
CPU init), quantized with optimum-quanto through the project's own `quantize_transformer`, a LoRA
attached with the project's `add_adapter`, gradient checkpointing on, and timed through the project's
Kontext step (`kontext_core.model.kontext_step`): one target and one same-size reference image, a
512-token T5 sequence, AdamW on the adapter.

    python bench/gpu_step.py                          # 512 and 1024 px, int8-quanto, LoRA rank 16
    python bench/gpu_step.py --device cpu --tiny      # smoke run of the same code on the tiny geometry

Prints one line per resolution: it/s, seconds per step, peak GPU memory (torch.cuda.max_memory_allocated),
model FLOPs per step (FlopCounterMode on the meta device) and MFU (those FLOPs per second over the card's
dense bf16 peak). With --peer, the same step written the diffusers training example's way, on the same
model, for comparison. `bench/gpu_all.sh` runs the whole set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import torch

from kontext_core.model.replica import transformer_config

# FLUX.1 Kontext [dev]'s transformer/config.json values: the replica's real width at full depth.
FULL_CONFIG = transformer_config("real", double_blocks=19, single_blocks=38)
T5_TOKENS = 512


# Dense bf16 peak (no sparsity) of cards by a substring of their name, in FLOP/s; --peak-tflops overrides.
CARD_PEAK_BF16 = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "RTX 4090": 165e12,
    "L4": 121e12,
    "A10G": 70e12,
}


@dataclass
class Result:
    resolution: int
    steps: int
    it_per_s: float
    s_per_step: float
    peak_gpu_gib: float | None
    loss: float
    step: str = "project"  # "project" (kontext_core's step) or "peer" (the diffusers example's)
    model_tflop_per_step: float | None = None
    mfu: float | None = None


def card_peak(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in CARD_PEAK_BF16.items() if key in name), None)


def model_flops(config: dict, resolution: int, rank: int, precision: str) -> float:
    """FLOPs of one training step (forward + backward, no recomputation), counted by torch's
    FlopCounterMode on the meta device: the model as trained (frozen base, LoRA), nothing allocated.
    Quantized layers count as the bf16 matmuls they stand for."""
    from diffusers import FluxTransformer2DModel
    from torch.utils.flop_counter import FlopCounterMode

    from kontext_core.config import Params
    from kontext_core.model.adapter_kinds import add_adapter
    from kontext_core.model.kontext_step import kontext_step

    meta = torch.device("meta")
    with meta:
        model = FluxTransformer2DModel(**config).requires_grad_(False)
    add_adapter(model, Params(lora_rank=rank, base_model_precision="no_change"))
    model.train()
    from kontext_core.model.kontext_step import StepInputs

    cpu_inputs, cpu_noise = step_inputs(resolution, config, torch.device("cpu"), torch.float32, 0)
    inputs = StepInputs(
        target_latents=cpu_inputs.target_latents.to(meta),
        reference_latents=[r.to(meta) for r in cpu_inputs.reference_latents],
        prompt_embeds=cpu_inputs.prompt_embeds.to(meta),
        pooled_prompt_embeds=cpu_inputs.pooled_prompt_embeds.to(meta),
    )
    noise = cpu_noise.to(meta)
    with FlopCounterMode(display=False) as counter:
        out = kontext_step(model, inputs, noise, torch.full((1,), 0.5, device=meta), 1.0)
        out.loss.backward()
    return float(counter.get_total_flops())


def peer_step_fn(transformer, optimizer, inputs, noise, sigmas, device: torch.device):
    """The same step written the way diffusers' train_dreambooth_lora_flux_kontext.py writes it:
    pack, concatenate the reference tokens, call the transformer, slice, unpack, MSE in float32."""
    from diffusers import FluxKontextPipeline

    target_latents, reference = inputs.target_latents, inputs.reference_latents[0]
    b, c, h, w = target_latents.shape
    dtype = target_latents.dtype
    latent_ids = FluxKontextPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
    cond_ids = latent_ids.clone()
    cond_ids[..., 0] = 1
    img_ids = torch.cat([latent_ids, cond_ids], dim=0)
    text_ids = torch.zeros(inputs.prompt_embeds.shape[1], 3, device=device, dtype=dtype)
    guidance = torch.full((b,), 1.0, device=device)
    packed_cond = FluxKontextPipeline._pack_latents(reference, b, c, h, w)

    def step() -> float:
        s = sigmas.view(-1, 1, 1, 1).to(dtype)
        noisy = (1.0 - s) * target_latents + s * noise
        packed = FluxKontextPipeline._pack_latents(noisy, b, c, h, w)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = transformer(
                hidden_states=torch.cat([packed, packed_cond], dim=1),
                timestep=sigmas,
                guidance=guidance,
                pooled_projections=inputs.pooled_prompt_embeds,
                encoder_hidden_states=inputs.prompt_embeds,
                txt_ids=text_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
        pred = FluxKontextPipeline._unpack_latents(pred[:, : packed.shape[1]], h * 8, w * 8, 8)
        target = noise - target_latents
        loss = torch.mean(((pred.float() - target.float()) ** 2).reshape(b, -1), 1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


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
    peak_flops = card_peak(device, args.peak_tflops)
    flops_by_resolution: dict[int, float] = {}
    kinds = ["project", "peer"] if args.peer else ["project"]
    for resolution, kind in [(r, k) for r in args.resolutions for k in kinds]:
        inputs, noise = step_inputs(resolution, config, device, dtype, args.seed)
        sigmas = torch.full((1,), 0.5, device=device)

        def project_step(inputs=inputs, noise=noise, sigmas=sigmas) -> float:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = kontext_step(transformer, inputs, noise, sigmas, 1.0)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(out.loss.detach())

        one_step = project_step
        if kind == "peer":
            one_step = peer_step_fn(transformer, optimizer, inputs, noise, sigmas, device)
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
        if resolution not in flops_by_resolution:  # the peer's step is the same model work
            flops_by_resolution[resolution] = model_flops(config, resolution, args.rank, args.precision)
        flops = flops_by_resolution[resolution]
        mfu = flops / (elapsed / args.steps) / peak_flops if peak_flops else None
        result = Result(
            resolution, args.steps, args.steps / elapsed, elapsed / args.steps, peak, loss, kind, flops / 1e12, mfu
        )
        results.append(result)
        peak_text = f"{peak:.2f} GiB" if peak is not None else "n/a (cpu)"
        mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a (no card peak; --peak-tflops)"
        label = "" if kind == "project" else "peer (diffusers example step) "
        print(
            f"{label}{resolution} px: {result.it_per_s:.3f} it/s ({result.s_per_step:.3f} s/step), "
            f"peak GPU memory {peak_text}, {flops / 1e12:.1f} TFLOP/step, MFU {mfu_text}, loss {loss:.4f}",
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
    parser.add_argument("--peer", action="store_true", help="also time the diffusers example's way of the same step")
    parser.add_argument("--peak-tflops", type=float, default=None, help="card's dense bf16 peak (default: known cards)")
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
