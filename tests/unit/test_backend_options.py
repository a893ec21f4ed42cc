"""A backend's own keys live in its own options model: one module (the backend and its options) and
one `register_backend` line make the dataset file accept them, check them in one line each, and
hand them to the backend; the shared entry knows none of them. The aws keys work that way too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kontext_core.config import ConfigError, DatasetEntry, load_datasets
from kontext_core.config.datasets import BACKEND_OPTIONS
from kontext_core.data.backends import BACKENDS, backend_for, register_backend
from tests.plugins.toy_backend import ToyBackend, ToyOptions


@pytest.fixture
def toy_backend():
    register_backend(ToyBackend())
    yield
    BACKENDS.pop("toy")
    BACKEND_OPTIONS.pop("toy")


def _load(tmp_path: Path, edit: dict) -> DatasetEntry:
    refs = {"id": "refs", "type": "toy", "instance_prompt": "refs", "dataset_type": "conditioning"}
    path = tmp_path / "datasets.json"
    path.write_text(json.dumps([{"id": "edits", "conditioning_data": ["refs"], **edit}, refs]))
    return load_datasets(path, base_dir=tmp_path).by_id()["edits"]


def test_a_backends_own_key_is_read_into_its_options_and_acted_on(tmp_path, toy_backend):
    entry = _load(tmp_path, {"type": "toy", "instance_prompt": "edits", "toy_count": 2})
    assert entry.backend_options == ToyOptions(toy_count=2)
    assert "toy_count" not in DatasetEntry.model_fields
    records, problems = backend_for(entry).records(entry, tmp_path, None)
    assert (len(records), problems) == (2, [])
    # Dumped where the file has it (what `kontext config check` prints).
    assert entry.model_dump(mode="json", exclude_defaults=True)["toy_count"] == 2


def test_a_backends_key_is_checked_in_one_line_naming_it(tmp_path, toy_backend):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, {"type": "toy", "instance_prompt": "edits", "toy_count": 0, "toy_cont": 1})
    lines = err.value.problems
    where = f"{tmp_path / 'datasets.json'}: dataset 'edits'"
    assert f"{where}: toy_count = 0: Input should be greater than or equal to 1" in lines
    assert any(line.endswith("unknown key 'toy_cont'; did you mean 'toy_count'?") for line in lines)


def test_without_its_backend_the_key_is_unknown(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'toy_count'"):
        _load(tmp_path, {"type": "local", "instance_data_dir": ".", "toy_count": 2})


def test_the_aws_keys_are_the_aws_backends_options_and_stay_masked(tmp_path):
    from kontext_core.data.s3_backend import S3Options, store_of

    secret = "not-for-anyone-to-see"
    entry = _load(
        tmp_path,
        {"type": "aws", "aws_bucket_name": "b", "aws_data_prefix": "p", "aws_secret_access_key": secret},
    )
    assert isinstance(entry.backend_options, S3Options)
    assert not any(k.startswith("aws_") for k in DatasetEntry.model_fields)
    assert store_of(entry).bucket == "b"
    for text in (repr(entry), str(entry.model_dump()), entry.model_dump_json()):
        assert secret not in text
    dumped = entry.model_dump(mode="json", exclude_defaults=True)
    assert (dumped["aws_bucket_name"], dumped["aws_secret_access_key"]) == ("b", "**********")
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, {"type": "aws", "aws_bucket_name": "b", "aws_max_pool_connections": 0})
    assert err.value.problems == [
        f"{tmp_path / 'datasets.json'}: dataset 'edits': aws_max_pool_connections = 0: "
        "Input should be greater than or equal to 1"
    ]
