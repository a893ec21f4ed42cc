"""`mixed_precision: bf16` on a CPU: refused in one line by the training code path, before any load."""

from __future__ import annotations

import pytest
import torch

from kontext_core.config import ConfigError, params_from_dict
from kontext_core.train.precision import check_precision
from kontext_core.train.run import TrainJob, run_training
from tests.conftest import ROOT


def test_training_on_cpu_with_bf16_is_refused_in_one_line(tmp_path):
    from kontext_core.params_file import parse_params_text

    data = parse_params_text((ROOT / "params.yaml").read_text()) | {"mixed_precision": "bf16"}
    job = TrainJob(
        params=params_from_dict(data).model_dump(mode="json"),
        # Nothing exists here: the refusal must come before the run loads caches or weights.
        workdir=str(tmp_path),
        fingerprint="f" * 16,
        adapter_dir=str(tmp_path / "adapter"),
        result_file=str(tmp_path / "result.json"),
        run_id=None,
    )
    with pytest.raises(ConfigError) as err:
        run_training(job)
    message = str(err.value)
    assert "\n" not in message
    assert "mixed_precision = 'bf16'" in message and "cpu" in message
    assert not (tmp_path / "adapter").exists()


def test_precision_rule():
    bf16 = params_from_dict({"mixed_precision": "bf16"})
    check_precision(params_from_dict({"mixed_precision": "no"}), torch.device("cpu"))
    check_precision(bf16, torch.device("cuda"))
    with pytest.raises(ConfigError):
        check_precision(bf16, torch.device("cpu"))
