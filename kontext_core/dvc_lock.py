"""After `kontext run`, record the flow's results in dvc.lock so that `dvc repro` trusts them.

DVC only knows what it ran: without a lock entry that matches, the first `dvc repro` after a flow
run would delete every output and run all stages again, although each stage's fingerprint says its
outputs are current. The flow ran the very stages dvc.yaml names, so `dvc commit` (which hashes
the workspace's deps, params and outs into dvc.lock and the DVC cache) states exactly what
happened. Skipped, with the reason, where that would record something else: no DVC repository, a
parameter file other than the one dvc.yaml reads, or a stale dvc.yaml.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kontext_core.dvc_yaml import PARAMS_FILE, render


def record_in_dvc_lock(workdir: Path, params_file: Path) -> str:
    """Run `dvc commit` for the project; returns one line saying what was done (or why not)."""
    workdir = Path(workdir).resolve()
    dvc_yaml = workdir / "dvc.yaml"
    if not (workdir / ".dvc").is_dir() or not dvc_yaml.is_file():
        return ""
    if Path(params_file).resolve() != workdir / PARAMS_FILE:
        return f"dvc.lock not updated: dvc.yaml reads {PARAMS_FILE}, this run read {params_file}"
    if dvc_yaml.read_text() != render(workdir):
        return "dvc.lock not updated: dvc.yaml is stale (run `kontext dvc-yaml`)"
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "commit", "--force", "--quiet"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return f"dvc.lock not updated: dvc commit failed: {last}"
    return "dvc.lock updated (dvc commit): `dvc repro` will find every stage up to date"
