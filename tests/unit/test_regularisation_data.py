"""SimpleTuner's `is_regularisation_data`: parent-teacher training, the base model's own prediction
as the target of that set's samples (standard LoRA and LyCORIS)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from kontext_core.config.datasets import DatasetEntry
from kontext_core.data.pairing import sampling_of
from kontext_core.train.data import Sampling, TrainData
from kontext_core.train.loop import make_batch, parent_teacher_target
from kontext_core.train.sampler import BatchStream, EpochSampler
from tests.unit.test_train_loop import _params, _train, base, data  # noqa: F401


def _regularised(data: TrainData, which: set[int]) -> TrainData:  # noqa: F811
    samples = [
        dataclasses.replace(s, sampling=Sampling(is_regularisation_data=i in which)) for i, s in enumerate(data.samples)
    ]
    return dataclasses.replace(data, samples=samples)


def test_the_key_travels_from_the_dataset_entry_to_the_pairs():
    entry = DatasetEntry(id="reg", instance_data_dir="x", is_regularization_data=True)
    assert sampling_of(entry) == {"is_regularisation_data": True}
    assert sampling_of(DatasetEntry(id="plain", instance_data_dir="x")) == {}
    assert Sampling(**json.loads(json.dumps(sampling_of(entry)))).is_regularisation_data


@pytest.mark.parametrize("lora_type", ["standard", "lycoris"])
def test_regularisation_items_target_the_base_prediction(base, data, lora_type, tmp_path):  # noqa: F811
    import copy

    from kontext_core.model.adapter_kinds import add_adapter

    extra = {}
    if lora_type == "lycoris":
        config = tmp_path / "lycoris.json"
        config.write_text(json.dumps({"algo": "lokr", "linear_dim": 4, "linear_alpha": 1, "factor": 4}))
        extra = {"lycoris_config": str(config)}
    params = _params(lora_type=lora_type, train_batch_size=2, **extra)
    transformer = copy.deepcopy(base)
    adapter = add_adapter(transformer, params, tmp_path)
    # A trained-looking adapter: the base and the adapted model must differ for the test to mean anything.
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    reg = _regularised(data, {0, 1})
    sampler = EpochSampler(reg.samples, 2, params.seed, params.conditioning_multidataset_sampling)
    stream = BatchStream(sampler, None)
    # A batch that mixes a regularisation sample with a plain one.
    batch = next(b for b in (stream.next(step) for step in range(1, 9)) if len({i.sample < 2 for i in b.items}) == 2)
    inputs, noise, sigmas, guidance = make_batch(reg, batch, params, torch.device("cpu"))
    target = parent_teacher_target(transformer, adapter, reg, batch, inputs, noise, sigmas, guidance)
    from kontext_core.model.kontext_step import kontext_step, pack_latents

    with torch.no_grad():
        adapted = kontext_step(transformer, inputs, noise, sigmas, guidance).prediction
    flow = pack_latents(noise - inputs.target_latents)
    for row, item in enumerate(batch.items):
        if item.sample < 2:
            assert not torch.allclose(target[row], flow[row])
            assert not torch.allclose(target[row], adapted[row], atol=1e-6)  # the adapter was off
        else:
            assert torch.equal(target[row], flow[row])
    # The adapter is switched back on afterwards.
    with torch.no_grad():
        again = kontext_step(transformer, inputs, noise, sigmas, guidance).prediction
    assert torch.equal(again, adapted)


def test_a_regularisation_set_starts_at_zero_loss_and_changes_training(base, data):  # noqa: F811
    # A fresh LoRA (B = 0) predicts exactly what the base predicts: the parent-teacher loss is 0.
    params = _params(max_train_steps=2)
    reg_result, _, reg_final, _ = _train(base, _regularised(data, set(range(4))), params)
    plain_result, _, plain_final, _ = _train(base, data, params)
    assert reg_result.losses[0] == 0.0
    assert plain_result.losses[0] > 0.0
    assert any(not torch.equal(reg_final[k], plain_final[k]) for k in plain_final)
