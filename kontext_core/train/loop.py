"""The training loop: buckets of cached samples, the Kontext step, the optimizer."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from kontext_core.config import Params
from kontext_core.train.kontext_step import StepInputs, kontext_step, sample_sigmas
from kontext_core.train.optimizers import build_optimizer

log = logging.getLogger(__name__)


@dataclass
class TrainSample:
    target: torch.Tensor  # (16, H, W)
    references: list[torch.Tensor]  # each (16, h, w); one per reference dataset
    prompt_embeds: torch.Tensor  # (T, D)
    pooled_prompt_embeds: torch.Tensor  # (D,)


def _bucket_key(sample: TrainSample, reference_choice: list[int]) -> tuple:
    return (tuple(sample.target.shape), tuple(tuple(sample.references[i].shape) for i in reference_choice))


def _choose_references(sample: TrainSample, mode: str, rng: random.Random) -> list[int]:
    if mode == "combined" or len(sample.references) == 1:
        return list(range(len(sample.references)))
    return [rng.randrange(len(sample.references))]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train_loop(
    params: Params,
    transformer: torch.nn.Module,
    trainable: list[torch.nn.Parameter],
    samples: list[TrainSample],
    on_step: Callable[[int, float, float], None] | None = None,
) -> list[float]:
    """Run `max_train_steps` optimizer steps; returns the per-step losses."""
    if not samples:
        raise ValueError("no training samples: the pair table has no train pairs")
    device = next(transformer.parameters()).device
    optimizer = build_optimizer(params, trainable)
    rng = random.Random(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    losses: list[float] = []
    use_bf16 = params.mixed_precision == "bf16" and device.type != "cpu"
    transformer.train()
    progress = tqdm(range(params.max_train_steps), desc="train", unit="step", leave=False, mininterval=2.0)
    for step in progress:
        # One bucket per batch: draw the first sample, then fill with samples of the same shapes.
        first = samples[rng.randrange(len(samples))]
        choice = _choose_references(first, params.conditioning_multidataset_sampling, rng)
        key = _bucket_key(first, choice)
        same = [s for s in samples if len(s.references) >= len(choice) and _bucket_key(s, choice) == key]
        batch = [first] + [same[rng.randrange(len(same))] for _ in range(params.train_batch_size - 1)]
        inputs = StepInputs(
            target_latents=torch.stack([s.target for s in batch]).to(device),
            reference_latents=[torch.stack([s.references[i] for s in batch]).to(device) for i in choice],
            prompt_embeds=torch.stack([s.prompt_embeds for s in batch]).to(device),
            pooled_prompt_embeds=torch.stack([s.pooled_prompt_embeds for s in batch]).to(device),
        )
        noise = torch.randn(inputs.target_latents.shape, generator=generator).to(device)
        sigmas = sample_sigmas(len(batch), params.flow_schedule_shift, generator).to(device)
        # bf16 autocast on accelerators only: CPU runs stay float32 and bit-reproducible.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = kontext_step(transformer, inputs, noise, sigmas, guidance=params.flux_guidance_value)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
        losses.append(loss)
        lr = optimizer.param_groups[0]["lr"]
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if on_step is not None:
            on_step(step, loss, lr)
    transformer.eval()
    return losses


def group_counts(samples: list[TrainSample]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for s in samples:
        counts["x".join(str(d * 8) for d in s.target.shape[1:])] += 1
    return dict(counts)
