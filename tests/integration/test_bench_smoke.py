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
