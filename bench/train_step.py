"""The training loop's overhead: its steps/s beside a bare forward + backward + optimizer loop.

Both loops train the same LoRA on the same model and the same batches (built beforehand for the
bare loop); the difference is what the loop adds: sampling, batch assembly from the latent and
text stores, the schedule, clipping, bookkeeping, the progress bar. The model has the tiny model's
geometry with configurable width and depth (random weights, nothing downloaded).

    python bench/train_step.py [--size small] [--steps 60] [--latent 16] [--device cuda] [--bf16]
                               [--mlflow batched|sync|none]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusers import FluxTransformer2DModel  # noqa: E402

from kontext_core.config import Params  # noqa: E402
from kontext_core.model.adapter_kinds import add_adapter  # noqa: E402
from kontext_core.model.kontext_step import kontext_step  # noqa: E402
from kontext_core.train.data import TrainData, TrainSample  # noqa: E402
from kontext_core.train.distributed import DistContext  # noqa: E402
from kontext_core.train.loop import make_batch, seed_everything, train_loop  # noqa: E402
from kontext_core.train.optimizers import build_optimizer  # noqa: E402
from kontext_core.train.sampler import BatchStream, EpochSampler  # noqa: E402

# (heads, head dim, double blocks, single blocks, text width); rope axes always sum to the head dim.
SIZES = {
    "tiny": (2, 16, 1, 2, 32),
    "small": (4, 32, 2, 4, 64),
    "medium": (8, 64, 4, 8, 256),
}
ROPE = {16: (4, 6, 6), 32: (8, 12, 12), 64: (16, 24, 24)}


def build_transformer(size: str) -> FluxTransformer2DModel:
    heads, head_dim, double, single, text = SIZES[size]
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text,
        pooled_projection_dim=text,
        guidance_embeds=True,
        axes_dims_rope=ROPE[head_dim],
    ).requires_grad_(False)


def build_data(samples: int, latent: int, text: int, text_len: int) -> TrainData:
    gen = torch.Generator().manual_seed(0)
    items, latents = [], {}
    for i in range(samples):
        items.append(TrainSample(f"b/{i}", f"t{i}", (f"r{i}",), "edit", (None,), (latent, latent), ((latent, latent),)))
        latents[f"r{i}"] = torch.randn(16, latent, latent, generator=gen)
        latents[f"t{i}"] = -latents[f"r{i}"]
    texts = {c: (torch.randn(text_len, text, generator=gen), torch.randn(text, generator=gen)) for c in ("edit", "")}
    return TrainData(items, latents.__getitem__, texts.__getitem__, set(texts))


def metric_logger(kind: str, store: Path):
    """The loop's MLflow logger as the train stage builds it (`batched`), the synchronous one-call-per-step
    logger it replaced (`sync`), or none; each on a fresh SQLite store in `store`."""
    if kind == "none":
        return None
    import mlflow
    from mlflow.entities import Metric

    from kontext_core.train.run import BatchedMetricLogger

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment(f"bench-{time.time_ns()}")).info.run_id
    if kind == "batched":
        return BatchedMetricLogger(client, run_id)

    class Sync:
        def __call__(self, step: int, metrics: dict) -> None:
            stamp = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()])

        def close(self) -> None:
            pass

    return Sync()


def time_loop(params: Params, base, data: TrainData, device: torch.device, warmup: int, logger=None) -> list[float]:
    seed_everything(params.seed)
    transformer = copy.deepcopy(base).to(device)
    adapter = add_adapter(transformer, params)
    stamps: list[float] = []

    def on_step(step: int, metrics: dict) -> None:
        if logger is not None:
            logger(step, metrics)
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    train_loop(params, transformer, adapter, data, dist=DistContext(device=device), on_step=on_step)
    if logger is not None:
        logger.close()  # what is still queued is written after the last step, as in the stage
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :], strict=False)]


def time_bare(params: Params, base, data: TrainData, device: torch.device, warmup: int) -> list[float]:
    seed_everything(params.seed)
    transformer = copy.deepcopy(base).to(device)
    adapter = add_adapter(transformer, params)
    trainable = adapter.parameters()
    optimizer = build_optimizer(params, trainable)
    stream = BatchStream(EpochSampler(data.samples, params.train_batch_size, params.seed, "random"))
    batches = [make_batch(data, stream.next(), params, device) for _ in range(params.max_train_steps)]
    use_bf16 = params.mixed_precision == "bf16" and device.type != "cpu"
    transformer.train()
    stamps = []
    for inputs, noise, sigmas, guidance in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = kontext_step(transformer, inputs, noise, sigmas, guidance)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(out.loss.detach())  # the loop reads the loss every step too
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--latent", type=int, default=16, help="latent edge (pixels / 8); tokens = (latent/2)^2")
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (accelerators only)")
    parser.add_argument("--repeats", type=int, default=2, help="alternate the two loops this many times")
    parser.add_argument(
        "--mlflow",
        choices=["none", "sync", "batched"],
        default="batched",
        help="the loop's MLflow logger: batched (the train stage's), sync (one log_batch per step), none",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    warmup = min(5, args.steps // 4)
    params = Params(
        max_train_steps=args.steps,
        train_batch_size=args.batch,
        lora_rank=args.rank,
        learning_rate=1e-4,
        base_model_precision="no_change",
        mixed_precision="bf16" if args.bf16 else "no",
        max_grad_norm=None,
    )
    base = build_transformer(args.size)
    data = build_data(16, args.latent, SIZES[args.size][4], args.text_len)
    loop_times, bare_times = [], []
    with tempfile.TemporaryDirectory() as store:
        for _ in range(args.repeats):
            logger = metric_logger(args.mlflow, Path(store))
            loop_times += time_loop(params, base, data, device, warmup, logger)
            bare_times += time_bare(params, base, data, device, warmup)
    loop_sps = 1 / statistics.median(loop_times)
    bare_sps = 1 / statistics.median(bare_times)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    params_m = sum(p.numel() for p in base.parameters()) / 1e6
    print(
        f"model {args.size} ({params_m:.1f} M params), {(args.latent // 2) ** 2} image tokens + "
        f"{(args.latent // 2) ** 2} reference + {args.text_len} text, batch {args.batch}, LoRA rank {args.rank}, "
        f"{'bf16' if args.bf16 else 'fp32'}, {name}"
    )
    print(f"{'loop':<28}{'steps/s':>10}")
    print(f"{'training loop (train_loop)':<28}{loop_sps:>10.2f}")
    print(f"{'bare fwd+bwd+optimizer':<28}{bare_sps:>10.2f}")
    print(
        f"loop overhead: {100 * (bare_sps / loop_sps - 1):.1f}% (median step time, {len(loop_times)} steps each; "
        f"MLflow logging: {args.mlflow})"
    )
    print(f"train loop vs bare: {loop_sps / bare_sps:.3f}")


if __name__ == "__main__":
    main()
