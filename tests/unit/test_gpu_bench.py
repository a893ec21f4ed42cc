"""bench/gpu_step.py: the CPU smoke mode runs the real code path; without CUDA it refuses clearly."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_step.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_step"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_smoke_run_reports_throughput(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["results"][0]
    assert result["resolution"] == 64 and result["steps"] == 2
    assert result["it_per_s"] > 0 and math.isfinite(result["loss"])
    printed = capsys.readouterr().out
    assert "int8-quanto, LoRA rank 16, gradient checkpointing on" in printed
    assert "64 px:" in printed and "it/s" in printed


def test_refuses_without_cuda_or_a_full_size_cpu_run(capsys):
    bench = _load()
    assert bench.main(["--device", "cpu"]) == 2
    assert "add --tiny" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert bench.main([]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert bench.FULL_CONFIG["num_layers"] == 19 and bench.FULL_CONFIG["num_single_layers"] == 38


def test_gpu_all_script_smoke_runs_both_precisions_with_the_peer_step_on_cpu(tmp_path):
    import os
    import subprocess

    script = SCRIPT.parent / "gpu_all.sh"
    env = {**os.environ, "GPU_ALL_OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(script), "--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1", "--peak-tflops", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for precision in ("int8-quanto", "no_change"):
        results = json.loads((tmp_path / f"gpu_step_{precision}.json").read_text())["results"]
        assert [r["step"] for r in results] == ["project", "peer"]
        project, peer = results
        # Same model and inputs, a few AdamW steps (lr 1e-4) apart: the example's way computes the same loss.
        assert math.isclose(project["loss"], peer["loss"], rel_tol=1e-4)
        assert project["model_tflop_per_step"] > 0 and project["mfu"] > 0
    assert done.stdout.count("peer (diffusers example step) 64 px:") == 2
    assert "MFU" in done.stdout
    # the replica part (CPU smoke: real_width.py --quick) ran the project's stages and printed its plan
    assert "== replica at real width" in done.stdout
    assert "real-width quantize: peak RSS D1 = " in done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("real-width plan: quantize host ")
    assert json.loads((tmp_path / "real_width.json").read_text())["results"]["D1"]["train"]["loss"] > 0
