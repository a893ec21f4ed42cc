"""A memory plan for FLUX.1 Kontext [dev] at its real width, measured at two depths, extrapolated per block.

Writes the replica (kontext_core.model.replica: every width of the real model, fewer blocks, the hub's
sharded layout, bf16 weights) at two depths, D1 = 1 double + 2 single blocks with 1 T5 layer and
D2 = 2 double + 4 single blocks with 2 T5 layers, and measures at each, every stage in a fresh
subprocess (its own peak RSS, `ru_maxrss`, so one stage's memory never counts for another):

- quantize: the quantize stage's code (`quantize_streaming`), int8-quanto, in the base dtype;
- cache_text: CLIP-L + T5-XXL (width 4096, the replica's layers) loaded as the stage loads them, one
  caption tokenized and encoded at 512 T5 tokens;
- cache_vae: the real VAE encoding one image at 512 px and one at 1024 px (the VAE does not depend on
  the transformer's depth: it is measured once per size and reported for both depths);
- train: the quantized transformer loaded block by block (`load_quantized`), LoRA rank 16, gradient
  checkpointing, one AdamW step of the Kontext step on a 512 px target + a 512 px reference with 512
  T5 tokens. Its activation memory is the RSS rise during the step over the RSS before it (sampled
  every 5 ms; glibc is told to return freed blocks at once, `MALLOC_MMAP_THRESHOLD_`); on a GPU,
  `torch.cuda.max_memory_allocated` over the step minus the memory allocated before it.

Extrapolation to the full model (19 double + 38 single blocks, 24 T5 layers): a straight line through
D1 and D2. Weights dominate quantize, cache_text and the train RSS, so those are extrapolated by
parameters (D1 -> D2 adds 1 double block of 340M and 2 single blocks of 142M; the full model has
19 x 340M + 38 x 142M in its blocks); cache_text by T5 layers; train activations by blocks (with
checkpointing each block keeps its input hidden states, the same size for both kinds). 1024 px
activations: the full-size 512 px figure times the token ratio (4096 + 4096 + 512) / (1024 + 1024 + 512),
since every activation that is kept is tokens x width.

    python bench/real_width.py             # the full bench (real width; ~15 minutes on 2 CPU cores)
    python bench/real_width.py --quick     # the same code at the small width (CI smoke, < 1 minute)
    python bench/real_width.py --device cuda --train-px 1024   # on a GPU (bench/gpu_all.sh)

Prints one line per stage, `real-width <stage>: peak RSS D1 = ... GB, D2 = ... GB, per block = ... GB,
full size (extrapolated) = ... GB`, and ends with `real-width plan: quantize host <X> GB, cache_text host
<Y> GB, train activations at 1024 px <Z> GB`. GB = 10^9 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

GB = 1e9
FULL_DOUBLE, FULL_SINGLE, FULL_T5_LAYERS = 19, 38, 24
T5_TOKENS = 512
RESULT = "RESULT "
LORA_RANK16_PARAMS = 26_148_864  # the `all` preset on the full model (docs/training.md, bench/lora_targets.py)


@dataclass(frozen=True)
class Depth:
    name: str
    double: int
    single: int
    t5_layers: int

    @property
    def blocks(self) -> int:
        return self.double + self.single


DEPTHS = (Depth("D1", 1, 2, 1), Depth("D2", 2, 4, 2))


# ---------------------------------------------------------------- measured in a child process


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class RssSampler:
    """The highest RSS seen while it runs (a thread polling every 5 ms)."""

    def __enter__(self) -> RssSampler:
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _params(replica: Path, **extra: Any):
    from kontext_core.config import Params

    return Params(pretrained_model_name_or_path=str(replica), **extra)


def _dtype(device):
    import torch

    return torch.bfloat16 if device.type == "cuda" else torch.float32


def measure_quantize(replica: Path, work: Path, device) -> dict[str, Any]:
    from kontext_core.model.quantize import quantize_streaming

    started = time.perf_counter()
    count = quantize_streaming(
        replica / "transformer", work / "quantized", "int8-quanto", dtype=_dtype(device), device=device
    )
    size = json.loads((work / "quantized" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    return {"seconds": time.perf_counter() - started, "modules": count, "bytes": size["metadata"]["total_size"]}


def measure_cache_text(replica: Path, device, tokens: int) -> dict[str, Any]:
    from kontext_core.cache.text_cache import encode_token_ids, tokenize_captions
    from kontext_core.model.load import load_text_pipeline

    started = time.perf_counter()
    pipe = load_text_pipeline(_params(replica), ROOT, dtype=_dtype(device)).to(device)
    embeds = encode_token_ids(
        pipe, *tokenize_captions(pipe, ["a red chair in a sunlit room, seen from the left"], tokens)
    )
    return {"seconds": time.perf_counter() - started, "t5_shape": list(embeds[0]["prompt_embeds"].shape)}


def measure_cache_vae(replica: Path, device, px: int) -> dict[str, Any]:
    import torch

    from kontext_core.cache.vae_cache import encode_pixels
    from kontext_core.model.load import load_vae

    started = time.perf_counter()
    vae = load_vae(_params(replica), ROOT, dtype=_dtype(device)).to(device)
    pixels = torch.rand(1, 3, px, px, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = encode_pixels(vae, pixels)
    return {"seconds": time.perf_counter() - started, "latents": list(latents.shape)}


def measure_train(work: Path, device, px: int, tokens: int) -> dict[str, Any]:
    import ctypes

    import torch

    from kontext_core.config import Params
    from kontext_core.model.adapter_kinds import add_adapter
    from kontext_core.model.kontext_step import StepInputs, kontext_step
    from kontext_core.model.quantize import load_quantized
    from kontext_core.train.loop import enable_gradient_checkpointing

    torch.manual_seed(0)
    transformer = load_quantized(work / "quantized", device=device)
    enable_gradient_checkpointing(transformer)
    adapter = add_adapter(transformer, Params(lora_rank=16, base_model_precision="int8-quanto"))
    for p in adapter.parameters():
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    transformer.train()
    config = transformer.config
    g = torch.Generator().manual_seed(0)
    side = px // 8
    dtype = _dtype(device)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    inputs = StepInputs(
        target_latents=rand(1, 16, side, side),
        reference_latents=[rand(1, 16, side, side)],
        prompt_embeds=rand(1, tokens, config.joint_attention_dim),
        pooled_prompt_embeds=rand(1, config.pooled_projection_dim),
    )
    noise = rand(1, 16, side, side)
    sigmas = torch.full((1,), 0.5, device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = kontext_step(transformer, inputs, noise, sigmas, 1.0)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out

    # On a GPU: one warm-up step (kernel selection, the optimizer's state), then steps timed on their own.
    timed = 3 if device.type == "cuda" else 1
    if device.type == "cuda":
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before_gpu = torch.cuda.memory_allocated()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed load buffers back to the OS: the step's rise is its own
    before = _rss_bytes()
    started = time.perf_counter()
    with RssSampler() as sampler:
        for _ in range(timed):
            out = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    result: dict[str, Any] = {
        "seconds": (time.perf_counter() - started) / timed,
        "loss": float(out.loss.detach()),
        "rss_before": before,
        "activations": sampler.peak - before,
        "tokens": 2 * (side // 2) ** 2 + tokens,
    }
    if device.type == "cuda":
        result["gpu_peak"] = torch.cuda.max_memory_allocated()
        result["gpu_activations"] = torch.cuda.max_memory_allocated() - before_gpu
    return result


def child_main(args: argparse.Namespace) -> int:
    import torch

    torch.set_grad_enabled(True)
    device = torch.device(args.device)
    replica, work = Path(args.replica), Path(args.work)
    results = {}
    for stage in args.child.split(","):
        if stage == "quantize":
            results[stage] = measure_quantize(replica, work, device)
        elif stage == "cache_text":
            results[stage] = measure_cache_text(replica, device, args.tokens)
        elif stage.startswith("cache_vae_"):
            results[stage] = measure_cache_vae(replica, device, int(stage.rsplit("_", 1)[1]))
        elif stage == "train":
            results[stage] = measure_train(work, device, args.train_px, args.tokens)
        else:
            raise SystemExit(f"--child: unknown stage {stage!r}")
        results[stage]["peak_rss"] = _peak_rss_bytes()
    print(RESULT + json.dumps(results), flush=True)
    return 0


# ---------------------------------------------------------------- the plan, in the parent


def run_child(stages: list[str], replica: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if "train" in stages:
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)  # big tensors mmapped: freed memory leaves RSS at once
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", ",".join(stages), "--replica", str(replica)]
    cmd += ["--work", str(work), "--device", args.device, "--train-px", str(args.train_px)]
    cmd += ["--tokens", str(args.tokens)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.child_timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"real-width: the {'+'.join(stages)} measurement failed (exit {done.returncode})")
    return json.loads(lines[-1][len(RESULT) :])


def block_params(width: str) -> tuple[int, int]:
    """Parameters of one double and one single block at this width (counted on the meta device)."""
    import torch
    from diffusers import FluxTransformer2DModel

    from kontext_core.model.replica import transformer_config

    with torch.device("meta"):
        model = FluxTransformer2DModel(**transformer_config(width, 1, 1))

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    return count(model.transformer_blocks[0]), count(model.single_transformer_blocks[0])


def line(stage: str, d1: float, d2: float, per_block: float, full: float) -> str:
    return (
        f"real-width {stage}: peak RSS D1 = {d1 / GB:.2f} GB, D2 = {d2 / GB:.2f} GB, "
        f"per block = {per_block / GB:.3f} GB, full size (extrapolated) = {full / GB:.2f} GB"
    )


def extrapolate(v1: float, v2: float, x1: float, x2: float, x_full: float) -> tuple[float, float]:
    """(slope per unit of x, value at x_full) of the line through (x1, v1), (x2, v2)."""
    slope = (v2 - v1) / (x2 - x1)
    return slope, v2 + slope * (x_full - x2)


def plan(results: dict[str, dict[str, Any]], width: str, args: argparse.Namespace) -> list[str]:
    p_double, p_single = block_params(width)
    d1, d2 = DEPTHS

    def params_of(double: int, single: int) -> int:
        return double * p_double + single * p_single

    x = {d.name: params_of(d.double, d.single) for d in DEPTHS}
    x_full = params_of(FULL_DOUBLE, FULL_SINGLE)
    blocks_added = d2.blocks - d1.blocks
    lines, full = [], {}

    def by_params(stage: str, key: str = "peak_rss") -> None:
        v1, v2 = results[d1.name][stage][key], results[d2.name][stage][key]
        slope, value = extrapolate(v1, v2, x[d1.name], x[d2.name], x_full)
        # "per block": the rise from D1 to D2 (1 double + 2 single blocks) per block added
        lines.append(line(stage, v1, v2, slope * (x[d2.name] - x[d1.name]) / blocks_added, value))
        full[stage] = value

    by_params("quantize")
    v1, v2 = results[d1.name]["cache_text"]["peak_rss"], results[d2.name]["cache_text"]["peak_rss"]
    slope, value = extrapolate(v1, v2, d1.t5_layers, d2.t5_layers, FULL_T5_LAYERS)
    lines.append(line("cache_text", v1, v2, slope, value))  # its blocks are T5 layers
    full["cache_text"] = value
    for px in args.vae_px:
        stage = f"cache_vae_{px}"
        value = results["vae"][stage]["peak_rss"]  # one VAE for every depth: measured once
        lines.append(line(f"cache_vae ({px} px)", value, value, 0.0, value))
    by_params("train")
    a1, a2 = results[d1.name]["train"]["activations"], results[d2.name]["train"]["activations"]
    slope, value = extrapolate(a1, a2, d1.blocks, d2.blocks, FULL_DOUBLE + FULL_SINGLE)
    lines.append(line(f"train_activations ({args.train_px} px)", a1, a2, slope, value))
    tokens = results[d1.name]["train"]["tokens"]
    tokens_1024 = 2 * (1024 // 16) ** 2 + args.tokens
    activations_1024 = value * tokens_1024 / tokens
    if args.device == "cuda":
        g1, g2 = results[d1.name]["train"]["gpu_peak"], results[d2.name]["train"]["gpu_peak"]
        slope, gpu_full = extrapolate(g1, g2, x[d1.name], x[d2.name], x_full)
        lines.append(line(f"train_gpu_peak ({args.train_px} px)", g1, g2, slope, gpu_full).replace("RSS", "GPU"))
        t1, t2 = results[d1.name]["train"]["seconds"], results[d2.name]["train"]["seconds"]
        slope_t, t_full = extrapolate(t1, t2, d1.blocks, d2.blocks, FULL_DOUBLE + FULL_SINGLE)
        lines.append(
            f"real-width train step ({args.train_px} px): D1 = {t1:.2f} s, D2 = {t2:.2f} s, "
            f"per block = {slope_t:.3f} s, "
            f"full size (extrapolated) = {t_full:.2f} s = {1 / t_full:.2f} it/s (seed's reference: ~0.4 it/s, RTX 4090)"
        )
        if args.predicted_gpu_gb:
            lines.append(
                f"real-width gpu memory: measured full size (extrapolated) {gpu_full / GB:.2f} GB, "
                f"predicted {args.predicted_gpu_gb:.2f} GB"
            )
    w1, w2 = results[d1.name]["quantize"]["bytes"], results[d2.name]["quantize"]["bytes"]
    weights_full = extrapolate(w1, w2, x[d1.name], x[d2.name], x_full)[1]
    lora_state = 16 * LORA_RANK16_PARAMS  # fp32 weights, gradients and AdamW's two moments
    predicted = weights_full + activations_1024 + lora_state
    lines.append(
        f"real-width predicted GPU memory at 1024 px: int8 weights {weights_full / GB:.2f} GB + activations "
        f"{activations_1024 / GB:.2f} GB + LoRA r16 with AdamW {lora_state / GB:.2f} GB = {predicted / GB:.2f} GB "
        f"(activations in {'bf16' if args.device == 'cuda' else 'float32: an upper bound for bf16'})"
    )
    lines.append(
        f"real-width plan: quantize host {full['quantize'] / GB:.2f} GB, "
        f"cache_text host {full['cache_text'] / GB:.2f} GB, "
        f"train activations at 1024 px {activations_1024 / GB:.2f} GB"
    )
    return lines


def write_replicas(root: Path, width: str) -> dict[str, Path]:
    from kontext_core.model.replica import write_replica

    out = {}
    for depth in DEPTHS:
        out[depth.name] = write_replica(
            root / depth.name,
            width=width,
            double_blocks=depth.double,
            single_blocks=depth.single,
            t5_layers=depth.t5_layers,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    width = "small" if args.quick else "real"
    started = time.perf_counter()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="real-width-", dir=args.tmp) as tmp:
        root = Path(tmp)
        replicas = write_replicas(root, width)
        print(f"replicas written ({width} width) in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        results: dict[str, dict[str, Any]] = {}
        per_depth = ["quantize", "cache_text", "train"]
        vae = [f"cache_vae_{px}" for px in args.vae_px]
        for depth in DEPTHS:
            work = root / f"work-{depth.name}"
            work.mkdir()
            if args.quick:  # one process for all of a depth's stages: a smoke run of the same code
                results[depth.name] = run_child(per_depth, replicas[depth.name], work, args)
            else:
                results[depth.name] = {}
                for stage in per_depth:
                    results[depth.name].update(run_child([stage], replicas[depth.name], work, args))
            print(f"{depth.name} measured at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if args.quick:
            results["vae"] = run_child(vae, replicas["D1"], root, args)
        else:
            results["vae"] = {}
            for stage in vae:
                results["vae"].update(run_child([stage], replicas["D1"], root, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"width": width, "results": results}, indent=2))
    for text in plan(results, width, args):
        print(text, flush=True)
    print(
        f"({width} width, {time.perf_counter() - started:.0f} s wall, load average {load:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end, {os.cpu_count()} CPUs)",
        file=sys.stderr,
    )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small width, one process per depth (CI smoke)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--train-px", type=int, default=None, help="training target/reference edge (512; 64 quick)")
    parser.add_argument("--vae-px", type=int, nargs="+", default=None, help="VAE image edges (512 1024; 64 128 quick)")
    parser.add_argument("--tokens", type=int, default=T5_TOKENS, help="T5 tokens (512)")
    parser.add_argument("--tmp", default=None, help="where the replicas are written (a temp dir inside it)")
    parser.add_argument("--json", default=None, help="also write the raw measurements here")
    parser.add_argument("--predicted-gpu-gb", type=float, default=None, help="the plan's GPU memory, shown beside")
    parser.add_argument("--child-timeout", type=int, default=900)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--replica", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_px is None:
        args.train_px = 64 if args.quick else 512
    if args.vae_px is None:
        args.vae_px = [64, 128] if args.quick else [512, 1024]
    if args.train_px % 16 or any(px % 16 for px in args.vae_px):
        parser.error("--train-px / --vae-px: edges must be multiples of 16")
    return args


if __name__ == "__main__":
    sys.exit(main())
