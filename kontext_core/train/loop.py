"""The training loop: one-bucket batches from the epoch sampler, the Kontext step, accumulation,
clipping, the schedule, checkpoints and (under `accelerate launch`) gradient averaging.

All randomness of a batch (caption dropout, noise, sigmas, guidance) comes from a generator seeded
by (seed, epoch, batch index): a resumed or distributed run draws exactly what a plain run draws.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from kontext_core.config import Params
from kontext_core.lifecycle import check_stop
from kontext_core.model.kontext_step import (
    StepInputs,
    kontext_step,
    pack_latents,
    sample_guidance,
    sample_sigmas,
)
from kontext_core.progress import Progress
from kontext_core.train.checkpoints import CheckpointManager, TrainerState
from kontext_core.train.data import TrainData
from kontext_core.train.distributed import DistContext
from kontext_core.train.ema import EMA_FILE, AdapterEMA
from kontext_core.train.optimizers import build_optimizer
from kontext_core.train.sampler import Batch, BatchStream, EpochSampler, derive_seed, steps_for_epochs
from kontext_core.train.schedulers import build_scheduler

log = logging.getLogger(__name__)

# on_step(step, {"train/loss": ..., "train/lr": ..., "train/grad_norm": ...}), main process only.
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    losses: list[float]
    steps: int
    resumed_from: str | None
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def total_steps(params: Params, sampler: EpochSampler, batches_per_step: int) -> int:
    """`max_train_steps`, or the steps that cover `num_train_epochs` when it is 0/null."""
    if params.max_train_steps:
        return params.max_train_steps
    assert params.num_train_epochs is not None
    return steps_for_epochs(sampler, params.num_train_epochs, batches_per_step)


def batch_caption(data: TrainData, sample_index: int, choice: tuple[int, ...], mode: str) -> str:
    sample = data.samples[sample_index]
    if mode == "random" and len(sample.references) > 1:
        own = sample.reference_captions[choice[0]]
        if own is not None and own in data.captions:
            return own
    return sample.caption


def make_batch(
    data: TrainData, batch: Batch, params: Params, device: torch.device
) -> tuple[StepInputs, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step inputs of one batch and its noise, sigmas and guidance (drawn on the CPU, then moved)."""
    generator = torch.Generator().manual_seed(derive_seed(params.seed, "batch", *batch.seed_parts))
    targets, prompts, pooled = [], [], []
    references: list[list[torch.Tensor]] = [[] for _ in batch.items[0].references]
    for item in batch.items:
        sample = data.samples[item.sample]
        caption = batch_caption(data, item.sample, item.references, params.conditioning_multidataset_sampling)
        # Dropout blanks the caption only: the reference still tells the model what to edit.
        if params.caption_dropout_probability > 0 and (
            torch.rand(1, generator=generator).item() < params.caption_dropout_probability
        ):
            caption = ""
        targets.append(data.load_latents(sample.target))
        for slot, ref in enumerate(item.references):
            references[slot].append(data.load_latents(sample.references[ref]))
        prompt, pool = data.load_text(caption)
        prompts.append(prompt)
        pooled.append(pool)
    target = torch.stack(targets)
    noise = torch.randn(target.shape, generator=generator)
    image_seq_len = (target.shape[2] // 2) * (target.shape[3] // 2)
    sigmas = sample_sigmas(len(targets), params, image_seq_len, generator)
    guidance = sample_guidance(len(targets), params, generator)
    inputs = StepInputs(
        target_latents=target.to(device),
        reference_latents=[torch.stack(r).to(device) for r in references],
        prompt_embeds=torch.stack(prompts).to(device),
        pooled_prompt_embeds=torch.stack(pooled).to(device),
    )
    return inputs, noise.to(device), sigmas.to(device), guidance.to(device)


def parent_teacher_target(
    transformer: torch.nn.Module,
    adapter,
    data: TrainData,
    batch: Batch,
    inputs: StepInputs,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    guidance: torch.Tensor,
) -> torch.Tensor | None:
    """SimpleTuner's `is_regularisation_data`: for the batch items of such a set, the target is the
    base model's own prediction (the adapter switched off), so the adapter learns to leave that
    data as the base model renders it. None when the batch holds no regularisation item.
    """
    mask = [data.samples[item.sample].sampling.is_regularisation_data for item in batch.items]
    if not any(mask):
        return None
    disabled = getattr(adapter, "disabled", None)
    if disabled is None:
        raise TypeError(f"{type(adapter).__name__} cannot be switched off: is_regularisation_data needs it")
    with torch.no_grad(), disabled():
        base = kontext_step(transformer, inputs, noise, sigmas, guidance).prediction
    flow_target = pack_latents(noise - inputs.target_latents)
    chosen = torch.tensor(mask, device=flow_target.device).view(-1, 1, 1)
    return torch.where(chosen, base.to(flow_target.dtype), flow_target)


def enable_gradient_checkpointing(transformer: torch.nn.Module, interval: int | None = None) -> None:
    """Recompute activations in the backward pass; with `interval` n, only in every n-th block."""
    transformer.enable_gradient_checkpointing()
    if not interval or interval <= 1:
        return
    blocks = [*getattr(transformer, "transformer_blocks", []), *getattr(transformer, "single_transformer_blocks", [])]
    position = {id(block): index for index, block in enumerate(blocks)}
    checkpointed = transformer._gradient_checkpointing_func

    def every_nth(block, *args):
        if position.get(id(block), 0) % interval == 0:
            return checkpointed(block, *args)
        return block(*args)

    transformer._gradient_checkpointing_func = every_nth


def train_loop(
    params: Params,
    transformer: torch.nn.Module,
    adapter,
    data: TrainData,
    dist: DistContext | None = None,
    checkpoints: CheckpointManager | None = None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train the adapter on `data`; returns the per-step losses (averaged over processes)."""
    started = time.perf_counter()
    dist = dist or DistContext(device=next(transformer.parameters()).device)
    device = dist.device
    trainable = adapter.parameters()
    dist.broadcast_parameters(trainable)
    accumulation = params.gradient_accumulation_steps
    sampler = EpochSampler(
        data.samples, params.train_batch_size, params.seed, params.conditioning_multidataset_sampling
    )
    steps = total_steps(params, sampler, dist.world_size * accumulation)
    optimizer = build_optimizer(params, trainable)
    scheduler = build_scheduler(params, optimizer, steps)
    state = TrainerState()
    resumed_from = checkpoints.resolve(params.resume_from_checkpoint) if checkpoints else None
    if resumed_from is not None:
        state = CheckpointManager.load(resumed_from, adapter, optimizer, scheduler)
        if on_step is not None and dist.is_main:
            # A resumed run gets a fresh tracking run: give it the whole loss curve so far.
            for step, loss in enumerate(state.losses):
                on_step(step, {"train/loss": loss})
    ema = None
    if params.use_ema:
        ema = AdapterEMA(trainable, params.ema_decay, params.ema_update_interval, params.ema_warmup_steps)
        if resumed_from is not None:
            ema.load_state_dict(load_file(Path(resumed_from) / f"{EMA_FILE}.safetensors"))
    stream = BatchStream(sampler, state.position)
    use_bf16 = params.mixed_precision == "bf16" and device.type != "cpu"
    interval = params.checkpoint_step_interval

    transformer.train()
    progress = Progress(steps, "train", "step", initial=state.step, disable=not dist.is_main)
    while state.step < steps:
        check_stop(f"train step {state.step + 1} of {steps}")  # a SIGTERM stops here, between steps
        step_loss = torch.zeros((), device=device)
        for _ in range(accumulation):
            # Every process walks the whole stream and takes its own batch of each group.
            batches = [stream.next(state.step + 1) for _ in range(dist.world_size)]
            inputs, noise, sigmas, guidance = make_batch(data, batches[dist.rank], params, device)
            # bf16 autocast on accelerators only: CPU runs stay float32 and bit-reproducible.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                target = parent_teacher_target(
                    transformer, adapter, data, batches[dist.rank], inputs, noise, sigmas, guidance
                )
                out = kontext_step(
                    transformer,
                    inputs,
                    noise,
                    sigmas,
                    guidance,
                    loss_type=params.loss_type,
                    huber_c=params.huber_c,
                    target=target,
                )
            (out.loss / accumulation).backward()
            step_loss += out.loss.detach() / accumulation
        dist.average_gradients(trainable)
        metrics = {"train/lr": optimizer.param_groups[0]["lr"]}
        if params.max_grad_norm:
            metrics["train/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(state.step + 1)
        loss = float(dist.average(step_loss))
        metrics["train/loss"] = loss
        state.losses.append(loss)
        state.step += 1
        state.position = stream.position
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{metrics['train/lr']:.2e}")
        if on_step is not None and dist.is_main:
            on_step(state.step - 1, metrics)
        if checkpoints is not None and interval and state.step % interval == 0 and state.step < steps:
            if dist.is_main:
                checkpoints.save(
                    state.step,
                    adapter,
                    optimizer,
                    scheduler,
                    state,
                    extra={"world_size": dist.world_size},
                    tensors={EMA_FILE: ema.state_dict()} if ema is not None else None,
                )
            dist.barrier()
    progress.close()
    if ema is not None:
        ema.copy_to_adapter()  # what is saved, validated and registered is the averaged adapter
    transformer.eval()
    return TrainResult(
        losses=state.losses,
        steps=state.step,
        resumed_from=str(resumed_from) if resumed_from else None,
        seconds=time.perf_counter() - started,
    )


def bucket_counts(data: TrainData) -> dict[str, int]:
    """Train samples per target size in pixels (for the run's info)."""
    counts: dict[str, int] = {}
    for sample in data.samples:
        key = "x".join(str(d * 8) for d in sample.target_shape)
        counts[key] = counts.get(key, 0) + 1
    return counts
