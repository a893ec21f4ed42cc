"""Time every stage of the pipeline on the embedded tiny model (CPU), cold and warm.

Prints seconds per stage for a first run in a fresh project, then for a second run (all no-ops),
and the training throughput. Usage: `python bench/pipeline.py [--steps N]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kontext_core.stages import STAGE_ORDER, run_stage  # noqa: E402
from tests.conftest import make_project  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        params_file = make_project(
            project,
            mlflow_db=project / "mlflow.db",
            max_train_steps=args.steps,
            validation_num_inference_steps=8,
            sample_data={"seed": 0, "count": 8, "size": 96},
        )
        print(f"{'stage':<12}{'cold s':>10}{'warm s':>10}")
        cold = {}
        for name in STAGE_ORDER:
            start = time.perf_counter()
            run_stage(name, params_file)
            cold[name] = time.perf_counter() - start
        for name in STAGE_ORDER:
            start = time.perf_counter()
            manifest = run_stage(name, params_file)
            warm = time.perf_counter() - start
            assert manifest["skipped"], name
            print(f"{name:<12}{cold[name]:>10.2f}{warm:>10.3f}")
        print(f"{'total':<12}{sum(cold.values()):>10.2f}")
        train = json.loads((project / "artifacts/manifests/train.json").read_text())
        print(f"train: {args.steps} steps in {train['seconds']:.2f} s ({args.steps / train['seconds']:.1f} steps/s)")


if __name__ == "__main__":
    main()
