"""SimpleTuner's dataset keys act as in SimpleTuner: one test per key, showing its effect."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from PIL import Image

from kontext_core.config import ConfigError, DatasetConfig, DatasetEntry, load_all, params_from_dict
from kontext_core.data.buckets import target_size
from kontext_core.data.local import local_records
from kontext_core.data.pairing import build_pairs, inherit_resolution
from kontext_core.data.records import Record
from kontext_core.train.data import Sampling, TrainSample
from kontext_core.train.sampler import BatchStream, EpochSampler


def _sample(dataset: str, i: int, **sampling) -> TrainSample:
    return TrainSample(
        key=f"{dataset}/{i:03d}",
        target=f"{dataset}{i}",
        references=(f"r{dataset}{i}",),
        caption="c",
        reference_captions=(None,),
        target_shape=(8, 8),
        reference_shapes=((8, 8),),
        dataset_id=dataset,
        sampling=Sampling(**sampling),
    )


def _samples(a: dict | None = None, b: dict | None = None, n: int = 10) -> list[TrainSample]:
    return [_sample("a", i, **(a or {})) for i in range(n)] + [_sample("b", i, **(b or {})) for i in range(n)]


def _per_dataset(sampler: EpochSampler, batches) -> Counter:
    return Counter(sampler.samples[item.sample].dataset_id for batch in batches for item in batch.items)


def test_repeats_show_a_dataset_one_plus_repeats_times_per_epoch():
    sampler = EpochSampler(_samples(a={"repeats": 2}), batch_size=2, seed=0, mode="random")
    assert _per_dataset(sampler, sampler.batches(0)) == {"a": 30, "b": 10}
    plain = EpochSampler(_samples(), batch_size=2, seed=0, mode="random")
    assert _per_dataset(plain, plain.batches(0)) == {"a": 10, "b": 10}


def test_start_and_end_epoch_bound_the_epochs_a_dataset_is_in():
    sampler = EpochSampler(_samples(b={"start_epoch": 2, "end_epoch": 3}), batch_size=1, seed=0, mode="random")
    counts = [_per_dataset(sampler, sampler.batches(epoch)) for epoch in range(4)]
    assert [c["b"] for c in counts] == [0, 10, 10, 0]
    assert all(c["a"] == 10 for c in counts)


def test_probability_weights_the_dataset_of_each_batch_and_zero_leaves_it_out():
    sampler = EpochSampler(_samples(a={"probability": 9.0}), batch_size=1, seed=0, mode="random")
    batches = sampler.batches(0)
    assert {len({sampler.samples[i.sample].dataset_id for i in b.items}) for b in batches} == {1}  # one set each
    early = _per_dataset(sampler, batches[:10])
    assert early["a"] >= 7  # with weights 9:1 the heavier set fills the start of the epoch
    never = EpochSampler(_samples(b={"probability": 0.0}), batch_size=1, seed=0, mode="random")
    assert _per_dataset(never, never.batches(0)) == {"a": 10}


def test_start_and_end_step_keep_a_dataset_out_of_other_steps():
    sampler = EpochSampler(_samples(b={"start_step": 4, "end_step": 6}), batch_size=1, seed=0, mode="random")
    stream = BatchStream(sampler)
    by_step = {step: _per_dataset(sampler, [stream.next(step) for _ in range(5)]) for step in range(1, 9)}
    assert all(by_step[s]["b"] == 0 for s in (1, 2, 3, 7, 8))
    assert sum(by_step[s]["b"] for s in (4, 5, 6)) > 0


def test_plain_datasets_keep_the_plain_stream():
    # No sampling key set: the same batches as samples without a dataset id at all.
    with_ids = EpochSampler(_samples(), batch_size=3, seed=5, mode="random")
    anonymous = [TrainSample(**{**s.__dict__, "dataset_id": ""}) for s in _samples()]
    assert with_ids.batches(1) == EpochSampler(anonymous, batch_size=3, seed=5, mode="random").batches(1)


def _records(dataset: str, count: int) -> list[Record]:
    return [Record(dataset, f"{i:03d}.png", f"{dataset}/{i:03d}.png", "edit it", "local", 64, 64) for i in range(count)]


def _pairs(edit: dict) -> list[dict]:
    base = {"type": "local", "instance_data_dir": "x"}
    config = DatasetConfig(
        entries=[
            DatasetEntry.model_validate({**base, "id": "edit", "conditioning_data": ["ref"], **edit}),
            DatasetEntry.model_validate({**base, "id": "ref"}),
        ]
    )
    records = {"edit": _records("edit", 8), "ref": _records("ref", 8)}
    pairs, _ = build_pairs(params_from_dict({}), config, records, [])
    return pairs


def test_max_num_samples_keeps_a_fixed_subset():
    pairs = _pairs({"max_num_samples": 3})
    assert len(pairs) == 3
    assert [p["key"] for p in pairs] == [p["key"] for p in _pairs({"max_num_samples": 3})]
    assert len(_pairs({})) == 8


def test_pairs_carry_the_sampling_keys_to_the_trainer():
    pairs = _pairs({"repeats": 2, "probability": 0.5, "end_epoch": 5})
    assert pairs[0]["sampling"] == {"repeats": 2, "probability": 0.5, "end_epoch": 5}
    assert Sampling(**pairs[0]["sampling"]).repeats == 2
    assert "sampling" not in _pairs({})[0]  # plain pair tables are unchanged


def _captioned(tmp_path: Path, **keys) -> list[str | None]:
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (16, 16)).save(folder / "a.png")
    (folder / "a.txt").write_text("make it red")
    entry = DatasetEntry.model_validate({"id": "d", "instance_data_dir": str(folder), **keys})
    records, _ = local_records(entry, tmp_path)
    return [r.caption for r in records]


def test_prepend_and_only_instance_prompt(tmp_path):
    text = {"caption_strategy": "textfile", "instance_prompt": "sks style"}
    assert _captioned(tmp_path, **text) == ["make it red"]
    assert _captioned(tmp_path, **text, prepend_instance_prompt=True) == ["sks style make it red"]
    assert _captioned(tmp_path, **text, only_instance_prompt=True) == ["sks style"]


def test_crop_aspect_buckets_closest_and_random():
    base = {"id": "d", "instance_data_dir": "x", "resolution": 512, "resolution_type": "pixel_area", "crop": True}
    closest = DatasetEntry.model_validate({**base, "crop_aspect": "closest", "crop_aspect_buckets": [1.0, 1.5]})
    assert target_size(1400, 1000, closest) == (640, 448)  # aspect 1.4 -> bucket 1.5
    assert target_size(1100, 1000, closest) == (512, 512)  # aspect 1.1 -> bucket 1.0
    weighted = [{"aspect_bucket": 0.5, "weight": 1.0}, {"aspect_bucket": 2.0, "weight": 1.0}]
    drawn = DatasetEntry.model_validate({**base, "crop_aspect": "random", "crop_aspect_buckets": weighted})
    sizes = {target_size(1000, 1000, drawn, seed=0, key=f"{i}.png") for i in range(20)}
    assert sizes == {(384, 704), (704, 384)}  # only listed aspects, both drawn
    assert target_size(1000, 1000, drawn, seed=0, key="3.png") == target_size(1000, 1000, drawn, seed=0, key="3.png")
    with pytest.raises(ValueError, match="crop_aspect_buckets"):
        DatasetConfig(entries=[DatasetEntry.model_validate({**base, "crop_aspect": "random"})])


def test_aspect_bucket_rounding():
    entry = {"id": "d", "instance_data_dir": "x", "resolution": 1024, "crop_aspect": "preserve"}
    fine = DatasetEntry.model_validate(entry)
    coarse = DatasetEntry.model_validate({**entry, "aspect_bucket_rounding": 1})
    assert target_size(1340, 1000, fine) != target_size(1340, 1000, coarse)  # 1.34 vs 1.3


def _project(tmp_path: Path, params: dict, datasets: list[dict]) -> Path:
    for name in ("e", "r"):
        (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / "db.json").write_text(json.dumps(datasets))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data_backend_config": "db.json", **params}))
    return tmp_path / "params.yaml"


def test_global_dataset_defaults_resolution_type_and_inheritance(tmp_path):
    datasets = [
        {"id": "e", "instance_data_dir": "e", "conditioning_data": ["r", "r2"], "resolution": 256},
        {"id": "r", "instance_data_dir": "r"},
        {"id": "r2", "instance_data_dir": "r", "resolution": 64},
        {"id": "e2", "instance_data_dir": "e", "conditioning": {"type": "superresolution"}},
    ]
    params = {"resolution": 128, "minimum_image_size": 32, "caption_strategy": "textfile"}
    _, config = load_all(_project(tmp_path, params, datasets))
    by_id = config.by_id()
    assert by_id["e"].resolution == 256 and by_id["e2"].resolution == 128  # own, else params.yaml's
    assert by_id["e2"].minimum_image_size == 32 and by_id["e2"].caption_strategy == "textfile"
    assert by_id["e2"].resolution_type == "pixel_area"  # SimpleTuner's default
    # A reference takes its edit set's own keys first, then params.yaml's; its own win over both.
    assert inherit_resolution(by_id["r"], by_id["e"]).resolution == 256
    assert inherit_resolution(by_id["r2"], by_id["e"]).resolution == 64
    assert not by_id["r"].gives_captions  # a caption_strategy from params.yaml is not the set's own
    # `conditioning` written as one object is one generator.
    assert [g.type for g in by_id["e2"].conditioning or []] == ["superresolution"]


def test_disable_is_simpletuners_alias_of_disabled(tmp_path):
    datasets = [
        {"id": "e", "instance_data_dir": "e", "conditioning_data": ["r"]},
        {"id": "r", "instance_data_dir": "r"},
        {"id": "off", "instance_data_dir": "missing-folder", "disable": True},
    ]
    _, config = load_all(_project(tmp_path, {}, datasets))
    assert [e.id for e in config.enabled()] == ["e", "r"]


def test_a_huggingface_set_with_a_file_caption_strategy_fails_at_check_time(tmp_path):
    datasets = [
        {"id": "e", "instance_data_dir": "e", "conditioning_data": ["hub"]},
        {"id": "hub", "type": "huggingface", "dataset_name": "someone/data"},
    ]
    with pytest.raises(ConfigError, match="dataset 'hub': caption_strategy = 'filename' does not apply"):
        load_all(_project(tmp_path, {}, datasets))
    load_all(_project(tmp_path, {"caption_strategy": None}, datasets))  # a default of null from params.yaml


def test_simpletuner_dataset_keys_without_an_effect_are_accepted_and_listed(tmp_path, caplog):
    datasets = [
        {
            "id": "e",
            "instance_data_dir": "e",
            "conditioning_data": ["r"],
            "cache_dir_vae": "cache/vae/e",  # not applicable: warned
            "vae_cache_clear_each_epoch": False,  # what happens here anyway: quiet
            "minimum_aspect_ratio": 0.5,  # modelled nowhere, known to SimpleTuner: warned
            "is_regularization_data": False,  # the US spelling
        },
        {"id": "r", "instance_data_dir": "r", "preserve_data_backend_cache": False},
    ]
    with caplog.at_level("WARNING", logger="kontext_core.config"):
        _, config = load_all(_project(tmp_path, {}, datasets))
    warned = [r.getMessage() for r in caplog.records if "not applicable" in r.getMessage()]
    assert len(warned) == 1
    assert "cache_dir_vae (" in warned[0] and "minimum_aspect_ratio (" in warned[0]
    assert "vae_cache_clear_each_epoch" not in warned[0] and "preserve_data_backend_cache" not in warned[0]
    datasets[0]["minimum_aspect_ratoi"] = 0.5
    with pytest.raises(ConfigError, match="unknown key 'minimum_aspect_ratoi'; did you mean 'minimum_aspect_ratio'"):
        load_all(_project(tmp_path, {}, datasets))


def test_stages_path_load_then_check_with_params_applies_the_defaults(tmp_path):
    """load_datasets without params (as a stage calls it) leaves default-dependent rules to the check."""
    from kontext_core.config import check_datasets_with_params, load_datasets

    datasets = [
        {"id": "e", "instance_data_dir": "e", "conditioning_data": ["hub"]},
        {"id": "hub", "type": "huggingface", "dataset_name": "someone/data"},
    ]
    _project(tmp_path, {}, datasets)
    config = load_datasets(tmp_path / "db.json", base_dir=tmp_path)
    check_datasets_with_params(params_from_dict({"caption_strategy": None, "resolution": 96}), config, "params")
    assert config.by_id()["e"].resolution == 96
    with pytest.raises(ConfigError, match="caption_strategy = 'filename' does not apply"):
        check_datasets_with_params(params_from_dict({}), config, "params")
