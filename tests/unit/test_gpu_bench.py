"""bench/gpu_step.py: the CPU smoke mode runs the real code path; without CUDA it refuses clearly. bench/gpu_all.sh
runs it with bench/real_width.py --quick, whose lines are checked here too."""

from __future__ import annotations

import importlib.util
import json
import math
import re
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
    replicas = tmp_path / "tmp"
    replicas.mkdir()
    # TMPDIR: where real_width.py writes its replicas (and must remove them).
    env = {**os.environ, "GPU_ALL_OUT": str(tmp_path), "PYTHON": sys.executable, "TMPDIR": str(replicas)}
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
    _check_real_width_quick(done.stdout, tmp_path / "real_width.json", replicas)


def _check_real_width_quick(out: str, raw_json: Path, replicas: Path) -> None:
    """bench/real_width.py --quick (run by gpu_all.sh above): one line per stage, the plan last."""
    number = r"-?\d+\.\d+"
    stage_line = (
        rf"real-width (?P<stage>[^:]+): peak RSS D1 = {number} GB, D2 = {number} GB, "
        rf"per block = {number} GB, full size \(extrapolated\) = (?P<full>{number}) GB"
    )
    lines = out.strip().splitlines()
    stages = [re.fullmatch(stage_line, text) for text in lines if ": peak RSS" in text]
    assert all(stages), lines
    assert re.search(rf"^real-width predicted GPU memory at 1024 px: .* = {number} GB \(activations in ", out, re.M)
    names = [m["stage"] for m in stages]
    assert names == [
        "quantize",
        "cache_text",
        "cache_vae (64 px)",
        "cache_vae (128 px)",
        "train",
        "train_activations (64 px)",
    ]
    assert all(float(m["full"]) > 0 for m in stages)
    plan = re.fullmatch(
        rf"real-width plan: quantize host {number} GB, cache_text host {number} GB, "
        rf"train activations at 1024 px {number} GB",
        lines[-1],
    )
    assert plan, lines[-1]
    # the measurements ran the real stages: the quantize output and a finite training loss
    raw = json.loads(raw_json.read_text())["results"]
    assert raw["D2"]["quantize"]["modules"] > raw["D1"]["quantize"]["modules"] > 0
    assert math.isfinite(raw["D1"]["train"]["loss"]) and raw["D1"]["train"]["loss"] > 0
    assert not list(replicas.glob("real-width-*"))  # the replicas are removed afterwards
