"""The closing lines of `kontext run`: base vs adapter PSNR and the registry's decision."""

from __future__ import annotations

from flows.summary import REGISTRATION, run_summary
from kontext_core.config import params_from_dict
from kontext_core.fsutil import write_json
from kontext_core.stages.validate import VALIDATE_METRICS

PSNR = params_from_dict({"registry": {"metric": "psnr"}})


def _write(tmp_path, became: bool, previous: float | None) -> None:
    metrics = {"psnr": 14.25, "psnr_base": 8.5, "eval_loss": 0.75, "eval_loss_base": 1.25, "eval_pairs": 2}
    write_json(tmp_path / VALIDATE_METRICS, metrics)
    write_json(
        tmp_path / REGISTRATION,
        {"version": "3", "became_champion": became, "champion_metric": previous, "model_name": "kontext-lora"},
    )


def test_summary_prints_both_psnrs_and_a_promotion(tmp_path):
    _write(tmp_path, became=True, previous=12.0)
    lines = run_summary(PSNR, tmp_path)
    assert lines[0].startswith("val/psnr base 8.50, lora 14.25")
    assert lines[1] == "champion decision: version 3 is @champion (val/psnr 14.2500; previous @champion: 12.0000)"


def test_summary_says_when_the_champion_stays(tmp_path):
    _write(tmp_path, became=False, previous=20.0)
    lines = run_summary(PSNR, tmp_path)
    assert lines[-1] == "champion decision: version 3 not promoted (val/psnr 14.2500; @champion has 20.0000)"


def test_summary_of_a_first_version(tmp_path):
    _write(tmp_path, became=True, previous=None)
    assert "no previous champion" in run_summary(PSNR, tmp_path)[-1]


def test_summary_with_the_default_metric_shows_the_eval_loss_of_both(tmp_path):
    _write(tmp_path, became=True, previous=1.0)
    lines = run_summary(params_from_dict({}), tmp_path)
    assert lines[1] == "val/eval_loss base 1.2500, lora 0.7500"
    assert lines[2] == "champion decision: version 3 is @champion (val/eval_loss 0.7500; previous @champion: 1.0000)"
