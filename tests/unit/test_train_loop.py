"""The training loop on the tiny transformer with in-memory latents: optimizers, schedules,
accumulation, checkpointing and exact resume."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from kontext_core.config import ConfigError, Params
from kontext_core.model.adapter_kinds import add_adapter
from kontext_core.train.checkpoints import CheckpointManager
from kontext_core.train.data import TrainData, TrainSample
from kontext_core.train.loop import enable_gradient_checkpointing, seed_everything, train_loop
from kontext_core.train.optimizers import trainable_dtype


@pytest.fixture(scope="module")
def base():
    from kontext_core.model.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0).transformer.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def data() -> TrainData:
    gen = torch.Generator().manual_seed(0)
    samples, latents = [], {}
    for i in range(4):
        samples.append(TrainSample(f"d/{i}", f"t{i}", (f"r{i}",), f"c{i % 2}", (None,), (8, 8), ((8, 8),)))
        latents[f"r{i}"] = torch.randn(16, 8, 8, generator=gen)
        latents[f"t{i}"] = -latents[f"r{i}"]
    texts = {c: (torch.randn(512, 32, generator=gen), torch.randn(32, generator=gen)) for c in ("c0", "c1", "")}
    return TrainData(samples, latents.__getitem__, texts.__getitem__, set(texts))


def _params(**kw) -> Params:
    defaults = dict(max_train_steps=4, lora_rank=4, learning_rate=1e-3, seed=3, base_model_precision="no_change")
    return Params(**{**defaults, **kw})


def _train(base, data, params, checkpoints=None, gradient_checkpointing=False):
    seed_everything(params.seed)
    transformer = copy.deepcopy(base)
    if gradient_checkpointing:
        enable_gradient_checkpointing(transformer, params.gradient_checkpointing_interval)
    adapter = add_adapter(transformer, params)
    for p in adapter.parameters():
        p.data = p.data.to(trainable_dtype(params))
    initial = {k: v.clone() for k, v in adapter.state_dict().items()}
    metrics: list[dict] = []
    result = train_loop(
        params, transformer, adapter, data, checkpoints=checkpoints, on_step=lambda s, m: metrics.append(m)
    )
    return result, initial, adapter.state_dict(), metrics


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optimizer", ["adamw", "optimi-adamw", "optimi-lion", "adamw_bf16"])
def test_each_optimizer_trains_a_few_steps(base, data, optimizer):
    result, initial, final, _ = _train(base, data, _params(optimizer=optimizer, max_train_steps=3))
    assert result.steps == 3 and all(math.isfinite(v) for v in result.losses)
    assert not _equal(initial, final)
    assert {v.dtype for v in final.values()} == {trainable_dtype(_params(optimizer=optimizer))}


@pytest.mark.parametrize("scheduler", ["constant", "constant_with_warmup", "cosine", "polynomial"])
def test_each_scheduler_shapes_the_learning_rate(base, data, scheduler):
    lr = 1e-3
    params = _params(lr_scheduler=scheduler, lr_warmup_steps=2, max_train_steps=6, learning_rate=lr, lr_end=1e-5)
    _, _, _, metrics = _train(base, data, params)
    lrs = [m["train/lr"] for m in metrics]
    if scheduler == "constant":
        assert lrs == [lr] * 6
        return
    assert lrs[:3] == pytest.approx([0.0, lr / 2, lr])  # linear warmup over 2 steps
    if scheduler == "constant_with_warmup":
        assert lrs[2:] == pytest.approx([lr] * 4)
    else:
        assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))  # decays after warmup
        assert lrs[-1] > (1e-5 if scheduler == "polynomial" else 0)


def test_training_is_reproducible_and_bf16_autocast_stays_off_on_cpu(base, data):
    first = _train(base, data, _params())
    again = _train(base, data, _params())
    bf16 = _train(base, data, _params(mixed_precision="bf16"))
    assert first[0].losses == again[0].losses and _equal(first[2], again[2])
    assert _equal(first[2], bf16[2])


def test_gradient_checkpointing_with_interval_changes_memory_not_results(base, data):
    plain = _train(base, data, _params())
    every_other = _train(base, data, _params(gradient_checkpointing_interval=2), gradient_checkpointing=True)
    for key, value in plain[2].items():
        assert torch.allclose(value, every_other[2][key], atol=1e-6), key


def test_accumulation_clipping_and_epochs(base, data):
    # 4 samples, batches of 1, 2 micro-batches per step, 2 epochs -> 4 optimizer steps.
    params = _params(max_train_steps=0, num_train_epochs=2, gradient_accumulation_steps=2, max_grad_norm=1e9)
    result, _, unclipped, metrics = _train(base, data, params)
    assert result.steps == 4
    norms = [m["train/grad_norm"] for m in metrics]
    assert all(n > 0 for n in norms)
    # A threshold below every step's norm clips each step by a different factor, which even Adam's
    # scale invariance does not undo.
    clipped = _train(base, data, params.model_copy(update={"max_grad_norm": min(norms) / 10}))[2]
    assert not _equal(unclipped, clipped)
    no_clipping = _train(base, data, params.model_copy(update={"max_grad_norm": None}))
    assert "train/grad_norm" not in no_clipping[3][0]
    assert _equal(unclipped, no_clipping[2])


@pytest.mark.parametrize("optimizer", ["adamw", "optimi-lion", "adamw_bf16"])
def test_resume_from_a_checkpoint_ends_with_the_same_adapter(base, data, tmp_path, optimizer):
    params = _params(
        max_train_steps=6,
        checkpoint_step_interval=2,
        checkpoints_total_limit=2,
        optimizer=optimizer,
        lr_scheduler="cosine",
        lr_warmup_steps=3,
        lora_dropout=0.1,  # where the adapter applies it, it draws from the global generator (restored too)
    )
    manager = CheckpointManager(tmp_path / "ckpt", "fp-a" * 8, params.checkpoints_total_limit)
    full = _train(base, data, params, checkpoints=manager)
    assert [p.name for p in manager.checkpoints()] == ["checkpoint-2", "checkpoint-4"]  # 6 is the end
    state = json.loads((manager.checkpoints()[0] / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["position"] == {"epoch": 0, "index": 2}
    resumed = _train(base, data, params.model_copy(update={"resume_from_checkpoint": "latest"}), checkpoints=manager)
    assert resumed[0].resumed_from.endswith("checkpoint-4")
    assert resumed[0].losses == full[0].losses
    assert [m["train/loss"] for m in resumed[3]] == full[0].losses  # the whole curve reaches the tracker
    assert _equal(resumed[2], full[2])
    if optimizer == "adamw":
        explicit = params.model_copy(update={"resume_from_checkpoint": str(manager.checkpoints()[0])})
        assert _equal(_train(base, data, explicit, checkpoints=manager)[2], full[2])


def test_checkpoint_limit_and_fingerprint_guard(base, data, tmp_path):
    params = _params(max_train_steps=5, checkpoint_step_interval=1, checkpoints_total_limit=2)
    mine = CheckpointManager(tmp_path, "a" * 64, 2)
    _train(base, data, params, checkpoints=mine)
    assert [p.name for p in mine.checkpoints()] == ["checkpoint-3", "checkpoint-4"]
    other = CheckpointManager(tmp_path, "b" * 64, 2)
    latest = params.model_copy(update={"resume_from_checkpoint": "latest"})
    assert _train(base, data, latest, checkpoints=other)[0].resumed_from is None  # never another run's state
    foreign = params.model_copy(update={"resume_from_checkpoint": str(mine.checkpoints()[-1])})
    with pytest.raises(ConfigError, match="refusing to resume"):
        _train(base, data, foreign, checkpoints=other)
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        other.resolve(str(tmp_path / "nowhere"))
