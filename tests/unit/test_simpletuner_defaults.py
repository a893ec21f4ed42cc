"""Our defaults and accepted values against SimpleTuner's, derived from its source (config/simpletuner/).

A key acted on here either has SimpleTuner's default and accepts SimpleTuner's values, or its
difference is listed with the reason in kontext_core.config.simpletuner_defaults (and so in
docs/simpletuner.md and `kontext config check`): a difference can never be silent.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from kontext_core.config.datasets import DatasetEntry
from kontext_core.config.params import Params
from kontext_core.config.simpletuner import acted_keys
from kontext_core.config.simpletuner_defaults import (
    DIFFERENCES,
    REFUSED_VALUES,
    SAME_MEANING,
    SIMPLETUNER_COMMIT,
    UNSUPPORTED_CHOICES,
)

ROOT = Path(__file__).resolve().parents[2]
TABLE_PATH = ROOT / f"config/simpletuner/defaults@{SIMPLETUNER_COMMIT[:12]}.json"
TABLE = json.loads(TABLE_PATH.read_text())


def _ours(key: str):
    return Params.model_fields[key].get_default(call_default_factory=True)


def _theirs_as_ours(key: str, value):
    return SAME_MEANING.get(key, {}).get(value, value)


def _literals(annotation) -> set:
    found: set = set()
    if typing.get_origin(annotation) is typing.Literal:
        found.update(typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        found |= _literals(arg)
    return found


def test_the_table_names_the_commit_it_was_derived_from():
    assert TABLE["commit"] == SIMPLETUNER_COMMIT and TABLE["repository"] == "bghira/SimpleTuner"
    assert len(TABLE["keys"]) > 400 and TABLE["keys"]["loss_type"]["choices"] == ["l2", "huber", "smooth_l1"]


ACTED_WITH_DEFAULT = [k for k in acted_keys() if "default" in TABLE["keys"].get(k, {})]


@pytest.mark.parametrize("key", ACTED_WITH_DEFAULT)
def test_each_default_equals_simpletuners_or_is_a_listed_difference(key):
    theirs = TABLE["keys"][key]["default"]
    if key in DIFFERENCES:
        assert DIFFERENCES[key].simpletuner == theirs, f"{key}: the listed SimpleTuner default is stale"
        assert _ours(key) != _theirs_as_ours(key, theirs) or key in SAME_MEANING, f"{key}: no longer differs"
    else:
        assert _ours(key) == _theirs_as_ours(key, theirs), f"{key}: ours {_ours(key)!r}, SimpleTuner {theirs!r}"


def test_every_listed_difference_is_a_key_acted_on():
    assert set(DIFFERENCES) <= set(acted_keys())


def test_lr_power_and_the_flux_guidance_range_are_simpletuners():
    assert _ours("lr_power") == 0.8 and _ours("flux_guidance_min") == 0.0
    assert _ours("lr_scheduler") == "constant_with_warmup" and _ours("validation_num_inference_steps") == 30


# Keys with a fixed set of values here (lora_type is checked by the adapter registry instead).
WITH_CHOICES = [
    k for k in acted_keys() if TABLE["keys"].get(k, {}).get("choices") and _literals(Params.model_fields[k].annotation)
]


@pytest.mark.parametrize("key", WITH_CHOICES)
def test_simpletuners_values_are_accepted_or_refused_with_a_reason(key):
    ours = _literals(Params.model_fields[key].annotation)
    theirs = {_theirs_as_ours(key, c) for c in TABLE["keys"][key]["choices"]}
    missing = theirs - ours - set(REFUSED_VALUES.get(key, {}))
    assert not missing or key in UNSUPPORTED_CHOICES, f"{key}: SimpleTuner accepts {missing}, not accepted here"


def test_simpletuners_spellings_load():
    params = Params.model_validate(
        {"loss_type": "l2", "optimizer": "torch-adamw", "caption_strategy": "instance_prompt"}
    )
    assert (params.loss_type, params.optimizer, params.caption_strategy) == ("mse", "adamw", "instanceprompt")


def test_dataset_crop_defaults_and_choices_are_simpletuners():
    dataset = TABLE["dataset"]
    for key in ("crop", "crop_style", "crop_aspect"):
        assert DatasetEntry.model_fields[key].default == dataset[key]["default"], key
    for key in ("crop_style", "crop_aspect", "resolution_type"):
        assert set(dataset[key]["choices"]) <= _literals(DatasetEntry.model_fields[key].annotation), key


def test_simpletuners_aliases_of_keys_acted_on_are_mapped_to_them():
    from kontext_core.config.simpletuner import MAPPED

    for key in acted_keys():
        for alias in TABLE["keys"].get(key, {}).get("aliases", []):
            if alias != key:
                assert MAPPED[alias].target == key, alias


def test_every_key_of_simpletuners_parser_is_known_here():
    from kontext_core.config.simpletuner import state_of

    names = set(TABLE["keys"]) | {a for entry in TABLE["keys"].values() for a in entry.get("aliases", [])}
    assert not [key for key in sorted(names) if state_of(key) == "unknown"]
