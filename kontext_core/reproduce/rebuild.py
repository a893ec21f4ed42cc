"""Run the recorded commit's own stages, in a child process, up to `train`.

The child imports `kontext_core` from the checkout (PYTHONPATH), not this process's copy: the stage
code, its code versions and the params schema are the commit's. It logs into a scratch MLflow store
so a rebuild leaves no run in the project's experiment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from kontext_core.reproduce.record import CannotReproduce

# Executed by the child with the checkout's code. The stages whose outputs were brought over
# (`brought`) are treated like outputs restored by `dvc pull`: hashed from disk, not rebuilt.
DRIVER = """
import json, sys
from pathlib import Path


def main(job_file, result_file):
    job = json.loads(Path(job_file).read_text())
    result = {"params_mismatch": None, "ran": [], "skipped": []}
    from kontext_core.config import load_params
    from kontext_core.stages import STAGE_ORDER, run_stage
    try:
        from kontext_core.tracking.lineage import flat_params
        flat, logged = flat_params(load_params(Path("params.yaml"))), job["logged_params"]
        result["params_mismatch"] = [k for k in sorted(set(flat) | set(logged)) if flat.get(k) != logged.get(k)]
    except ImportError:
        pass
    for name in STAGE_ORDER[: STAGE_ORDER.index(job["until"]) + 1]:
        if name in job["brought"]:
            continue
        # Forced: a skip trusts the fingerprint, and a changed image of the same name and size leaves
        # pair's table (and so cache_vae's fingerprint) unchanged. Content-addressed stores still
        # reuse the entries whose keys match, so a reused --workdir recomputes only what changed.
        manifest = run_stage(name, "params.yaml", force=True)
        result["skipped" if manifest["skipped"] else "ran"].append(name)
    Path(result_file).write_text(json.dumps(result))


# Guarded: stages start worker processes, which import __main__ again.
if __name__ == "__main__":
    import logging
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(sys.argv[1], sys.argv[2])
"""

_DROPPED_ENV = (
    "KONTEXT_MLFLOW_RUN_ID",
    "KONTEXT_PREFECT_FLOW_RUN_ID",
    "KONTEXT_PREFECT_FLOW_RUN_NAME",
    "KONTEXT_PREFECT_FLOW_RUN_URL",
    "PREFECT__FLOW_RUN_ID",
    "MLFLOW_RUN_ID",
)


def child_env(code_root: Path, scratch: Path, cpu_only: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(code_root), *filter(None, [env.get("PYTHONPATH")])])
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
    env.pop("MLFLOW_REGISTRY_URI", None)
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU-trained version is rebuilt on the CPU, GPU or not
    return env


def rebuild(
    code_root: Path, project: Path, logged_params: dict[str, str], until: str, cpu_only: bool, brought: list[str]
) -> dict[str, Any]:
    """Run the stages in `project` (inside the checkout `code_root`); returns what the driver saw."""
    with tempfile.TemporaryDirectory(prefix="kontext-reproduce-") as tmp:
        scratch = Path(tmp)
        job = {"logged_params": logged_params, "until": until, "brought": brought}
        (scratch / "job.json").write_text(json.dumps(job))
        (scratch / "driver.py").write_text(DRIVER)
        log_file = code_root / ".kontext-reproduce.log"  # kept with a --workdir
        with log_file.open("w") as log:
            done = subprocess.run(
                [sys.executable, str(scratch / "driver.py"), str(scratch / "job.json"), str(scratch / "result.json")],
                cwd=project,
                env=child_env(code_root, scratch, cpu_only),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if done.returncode != 0:
            tail = [line for line in log_file.read_text().splitlines() if line.strip()][-1:] or ["no output"]
            raise CannotReproduce(f"the rebuild at the recorded commit failed: {tail[0]} (log: {log_file})")
        return json.loads((scratch / "result.json").read_text())
