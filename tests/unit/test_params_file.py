"""params.yaml means the same to the pipeline as to DVC, also after DVC has rewritten it.

`dvc exp run -S key=value` applies the override with DVC's own writer (`dvc.utils.hydra.
apply_overrides`, ruamel.yaml round trip), which unquotes `"no"`, writes nulls blank and floats
as `4e-07`. Each key of the project's params.yaml goes through that writer here and must load back
to the same resolved params.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from dvc.utils.hydra import apply_overrides
from dvc.utils.serialize import load_yaml

from kontext_core.config import ConfigError, load_params
from kontext_core.config.params_file import parse_params_text
from tests.conftest import ROOT


def _leaves(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _as_typed(value: Any) -> str:
    """The value as a user types it after `-S key=` (Hydra's override syntax), unquoted when it can be."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_./:-]+", value):
        return value
    return "'" + str(value) + "'"


PARAMS = parse_params_text((ROOT / "params.yaml").read_text())
KEYS = _leaves(PARAMS)


def test_every_key_is_covered():
    names = {k for k, _ in KEYS}
    assert {"mixed_precision", "learning_rate", "lr_end", "lora_alpha", "prefect.cron", "registry.metric"} <= names
    assert len(KEYS) > 60


@pytest.mark.parametrize("key,value", KEYS, ids=[k for k, _ in KEYS])
def test_dvc_set_param_round_trip(tmp_path, key, value):
    original = tmp_path / "original.yaml"
    shutil.copy(ROOT / "params.yaml", original)
    rewritten = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", rewritten)
    apply_overrides(rewritten, [f"{key}={_as_typed(value)}"])
    assert load_params(rewritten).model_dump() == load_params(original).model_dump()
    # What DVC shows in `dvc params diff` is what the stages read.
    assert load_yaml(rewritten) == parse_params_text(rewritten.read_text())


def test_dvc_writer_output_is_what_yaml_1_1_misreads(tmp_path):
    """The rewritten file really holds the forms that broke `dvc exp run` (so the test above bites)."""
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(params, ["learning_rate=1e-5", "lora_alpha=null", "mixed_precision=no"])
    text = params.read_text()
    assert re.search(r"^mixed_precision: no\b", text, re.M)
    assert re.search(r"^learning_rate: 1e-05\b", text, re.M)
    assert re.search(r"^lora_alpha:\s*$", text, re.M)
    resolved = load_params(params)
    assert resolved.mixed_precision == "no"
    assert resolved.learning_rate == pytest.approx(1e-5)
    assert resolved.lora_alpha is None


def test_new_values_through_the_writer(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(params, ["mixed_precision=bf16", "max_train_steps=3", "prefect.cron='0 4 * * 2'"])
    resolved = load_params(params)
    assert (resolved.mixed_precision, resolved.max_train_steps, resolved.prefect.cron) == ("bf16", 3, "0 4 * * 2")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(text)
    return path


def test_invalid_yaml_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML") as err:
        load_params(_write(tmp_path, "learning_rate: [1,\n"))
    assert "\n" not in str(err.value)
