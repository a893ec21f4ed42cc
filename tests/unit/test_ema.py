"""use_ema: the saved adapter is the exponential moving average, with SimpleTuner's decay schedule."""

from __future__ import annotations

import pytest

from kontext_core.train.checkpoints import CheckpointManager
from kontext_core.train.ema import ema_decay_at
from tests.unit.test_train_loop import _equal, _params, _train, base, data  # noqa: F401 (fixtures)


def test_decay_schedule_is_simpletuners():
    assert ema_decay_at(1, 0.995) == 0.0  # the first update copies
    assert ema_decay_at(2, 0.995) == pytest.approx(2 / 11)
    assert ema_decay_at(10_000, 0.995) == 0.995  # capped at ema_decay
    assert [ema_decay_at(s, 0.9, warmup_steps=3) for s in (1, 2, 3, 4)] == [0.0, 0.0, 0.9, 0.9]


def test_use_ema_changes_the_saved_adapter(base, data):  # noqa: F811
    plain = _train(base, data, _params(max_train_steps=4))[2]
    averaged = _train(base, data, _params(max_train_steps=4, use_ema=True, ema_decay=0.9))[2]
    assert not _equal(plain, averaged)
    # A warm-up longer than the run copies the weights at every update: the live adapter exactly.
    copied = _train(base, data, _params(max_train_steps=4, use_ema=True, ema_warmup_steps=10))[2]
    assert _equal(plain, copied)


def test_ema_state_survives_a_resume(base, data, tmp_path):  # noqa: F811
    params = _params(max_train_steps=4, checkpoint_step_interval=2, use_ema=True, ema_decay=0.9)
    manager = CheckpointManager(tmp_path / "ckpt", "fp-ema" * 4)
    full = _train(base, data, params, checkpoints=manager)[2]
    assert (manager.checkpoints()[0] / "ema.safetensors").exists()
    resumed = _train(base, data, params.model_copy(update={"resume_from_checkpoint": "latest"}), checkpoints=manager)
    assert _equal(resumed[2], full)
