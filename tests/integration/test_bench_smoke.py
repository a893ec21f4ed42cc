"""The scale and near-limit benchmarks run end to end at tiny sizes and print their machine-readable lines.

No timing is asserted (speed lives in the printed numbers); only that each script runs the real stages
and prints what a script reading it expects.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(*args: str) -> str:
    env = {**os.environ, "KONTEXT_PROGRESS": "off"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_scale_quick_prints_the_ratio_line_last():
    out = _run("bench/scale.py", "--quick")
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"scale: time per item 10x/1x = \d+\.\d\d, peak RSS 10x/1x = \d+\.\d\d", last), last
    for stage in ("fetch", "pair", "degrade", "cache_vae", "cache_text"):
        assert re.search(rf"^{stage}\s", out, re.M), stage


def test_near_limit_quick_prints_one_ratio_per_stage():
    out = _run("bench/near_limit.py", "--quick")
    for name in ("cache_vae", "cache_text", "scan", "train loop"):
        assert re.search(rf"^{name} vs bare: \d+\.\d+$", out, re.M), (name, out[-2000:])


def test_real_width_quick_prints_one_line_per_stage_and_the_plan_last(tmp_path):
    out = _run("bench/real_width.py", "--quick", "--tmp", str(tmp_path), "--json", str(tmp_path / "raw.json"))
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
    import json
    import math

    raw = json.loads((tmp_path / "raw.json").read_text())["results"]
    assert raw["D2"]["quantize"]["modules"] > raw["D1"]["quantize"]["modules"] > 0
    assert math.isfinite(raw["D1"]["train"]["loss"])
    assert not list(tmp_path.glob("real-width-*"))  # the replicas are removed afterwards
