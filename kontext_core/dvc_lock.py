"""After a flow run (`kontext run` or a deployment's), record its results in dvc.lock so that `dvc
repro` trusts them; a run with overrides is not recorded, and says what the workspace then holds.

DVC only knows what it ran: without a lock entry that matches, the first `dvc repro` after a flow
run would delete every output and run all stages again, although each stage's fingerprint says its
outputs are current. The flow ran the very stages dvc.yaml names, so `dvc commit` (which hashes
the workspace's deps, params and outs into dvc.lock and the DVC cache) states exactly what
happened. Skipped, with the reason, where that would record something else: no DVC repository, a
parameter file other than the one dvc.yaml reads, or a stale dvc.yaml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


# `kontext run --no-dvc-commit`: the flow leaves dvc.lock alone.
NO_COMMIT_ENV = "KONTEXT_NO_DVC_COMMIT"


def workspace_after_run(
    workdir: Path, params_file: Path, overrides: dict[str, Any], registration: dict[str, Any]
) -> dict[str, str]:
    """Keep dvc.lock and the workspace in step after a flow run; returns {"dvc_lock": line, "workspace": line}.

    The stages write their outputs into the workspace whatever the run's settings. A run of the params
    file as it is gets recorded (`dvc commit`): `dvc status` then finds every stage up to date. A run
    with overrides is not: dvc.lock would pair params.yaml's values with outputs made from others.
    Its outputs stay in the workspace and the line says so (and whether they are the champion's), so
    that `dvc status` listing the stages that ran as changed is expected, not a surprise.
    """
    workdir = Path(workdir).resolve()
    if not (workdir / ".dvc").is_dir():
        return {"dvc_lock": "", "workspace": ""}
    model_uri = registration.get("model_uri") or "the adapter"
    champion = "the new @champion" if registration.get("became_champion") else "not the @champion"
    if overrides:
        settings = ", ".join(f"{k}={v}" for k, v in overrides.items())
        return {
            "dvc_lock": f"dvc.lock not updated: this run overrode {settings}",
            "workspace": (
                f"workspace: models/adapter and the metrics are this run's ({model_uri}, {champion}), made with "
                f"{settings} over {PARAMS_FILE}: `dvc status` shows the stages that ran as changed until "
                f"`kontext run` (or `dvc repro`) brings back {PARAMS_FILE}'s outputs"
            ),
        }
    if os.environ.get(NO_COMMIT_ENV) == "1":
        line = "dvc.lock not updated (--no-dvc-commit)"
    else:
        line = record_in_dvc_lock(workdir, params_file)
    return {"dvc_lock": line, "workspace": f"workspace: models/adapter and the metrics are {model_uri} ({champion})"}
