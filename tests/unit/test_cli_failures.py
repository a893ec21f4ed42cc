"""Expected failures end in one line naming the cause; KONTEXT_DEBUG=1 keeps the traceback."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from kontext_core.data.report import PairReport

runner = CliRunner()


def _params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data_backend_config": "datasets.json"}))
    (tmp_path / "datasets.json").write_text("[]")
    return path


def test_a_stage_that_cannot_run_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("KONTEXT_DEBUG", raising=False)
    result = runner.invoke(app, ["stage", "fetch", "--params", str(_params(tmp_path))])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stage 'fetch' needs stage 'init'")
    assert "Traceback" not in result.output


def test_kontext_debug_keeps_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("KONTEXT_DEBUG", "1")
    result = runner.invoke(app, ["stage", "fetch", "--params", str(_params(tmp_path))])
    assert isinstance(result.exception, RuntimeError) and "needs stage 'init'" in str(result.exception)


def test_a_preflight_summary_names_a_missing_reference_set():
    report = PairReport()
    report.stats("edit", "edit").images = 3
    report.stats("edit", "edit").no_reference_set = True
    report.check_limits(0.5)
    assert report.failures == [
        "dataset 'edit' yields no usable pairs: it has no reference set (neither conditioning_data nor conditioning)"
    ]


def test_a_runtime_error_from_a_library_is_a_bug_and_keeps_its_traceback():
    import torch

    from flows.cli import _expected

    with pytest.raises(RuntimeError) as from_torch:
        torch.ones(2, dtype=torch.float32) @ torch.ones(2, dtype=torch.bfloat16)
    assert not _expected(from_torch.value)
    with pytest.raises(RuntimeError) as from_here:
        raise RuntimeError("pair: no usable training pairs")
    assert not _expected(from_here.value)  # raised in a test file, not in kontext_core/flows/tasks
