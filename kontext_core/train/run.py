"""The training entry point: one job, run in process or by every process of `accelerate launch`.

    accelerate launch --num_processes 2 -m kontext_core.train.run --job artifacts/.train.staging/job.json

The job file carries the validated params, the project, the stage fingerprint and where to write;
the main process saves the adapter and a result file that the train stage reads back.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kontext_core.config import ConfigError, Params
from kontext_core.fsutil import write_json
from kontext_core.train.checkpoints import CheckpointManager
from kontext_core.train.distributed import DistContext, from_accelerate
from kontext_core.train.loop import (
    TrainResult,
    enable_gradient_checkpointing,
    seed_everything,
    train_loop,
)

log = logging.getLogger(__name__)

CHECKPOINT_ROOT = "models/checkpoints"


@dataclass
class TrainJob:
    # The run's validated params in process; their JSON form in a job file (`accelerate launch`), which
    # each launched process validates once.
    params: Params | dict
    workdir: str
    fingerprint: str
    adapter_dir: str
    result_file: str
    # Upstream products (kontext_core.train.data.CachePaths.to_json) and the quantize stage's folder.
    cache_paths: dict[str, str]
    quantized_dir: str
    run_id: str | None = None

    def save(self, path: Path) -> None:
        params = self.params.model_dump(mode="json") if isinstance(self.params, Params) else self.params
        write_json(path, {**asdict(replace(self, params={})), "params": params})

    @classmethod
    def load(cls, path: Path) -> TrainJob:
        return cls(**json.loads(Path(path).read_text()))


class BatchedMetricLogger:
    """Per-step metrics written to MLflow by a background thread, in batches.

    A synchronous `log_batch` per step waits for the tracking store (a SQLite transaction, or an
    HTTP round trip to a server) on every training step; here a step only appends to a list, and the
    thread writes whatever has gathered every `interval` seconds (at most `MAX_BATCH` metrics per
    call, MLflow's limit). `close()` writes the rest and re-raises a write error in the caller.
    """

    MAX_BATCH = 1000

    def __init__(self, client: Any, run_id: str, interval: float = 2.0) -> None:
        self.client = client
        self.run_id = run_id
        self.interval = interval
        self._pending: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        with self._lock:
            self._pending += [Metric(k, float(v), stamp, step) for k, v in metrics.items()]

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for start in range(0, len(pending), self.MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=pending[start : start + self.MAX_BATCH])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._flush()
            except BaseException as exc:  # kept for close(): a background thread cannot raise to the loop
                self._error = exc
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        self._flush()


def mlflow_logger(params: Params, workdir: Path, run_id: str) -> BatchedMetricLogger:
    from mlflow import MlflowClient

    from kontext_core.tracking.runs import configure

    configure(params, workdir)
    return BatchedMetricLogger(MlflowClient(), run_id)


def with_periodic_validation(on_step, params: Params, workdir: Path, transformer, run_id: str, device):
    """`on_step`, then validation every `validation_step_interval` steps (kontext_core.validate.periodic)."""
    from kontext_core.validate.periodic import mlflow_periodic_validation

    validation = mlflow_periodic_validation(params, workdir, transformer, run_id, device)
    if validation is None:
        return on_step

    def step_and_validate(step: int, metrics: dict[str, float]) -> None:
        on_step(step, metrics)
        # A resumed run replays its past losses through on_step (loss only): nothing to validate.
        if "train/lr" in metrics:
            validation(step + 1)

    return step_and_validate


def run_training(job: TrainJob, dist: DistContext | None = None) -> TrainResult:
    """Load the frozen base, add the adapter, train, save (main process)."""
    from kontext_core.model.adapter_kinds import add_adapter
    from kontext_core.model.base import frozen_base_transformer
    from kontext_core.model.load import training_device
    from kontext_core.train.data import CachePaths, load_cached_data
    from kontext_core.train.optimizers import trainable_dtype
    from kontext_core.train.precision import note_cpu_precision

    params = job.params if isinstance(job.params, Params) else Params.model_validate(job.params)
    workdir = Path(job.workdir)
    dist = dist or DistContext(device=training_device())
    note_cpu_precision(params, dist.device)
    seed_everything(params.seed)
    data = load_cached_data(CachePaths.from_json(job.cache_paths))
    transformer = frozen_base_transformer(params, workdir, Path(job.quantized_dir), dist.device).to(dist.device)
    if params.gradient_checkpointing:
        enable_gradient_checkpointing(transformer, params.gradient_checkpointing_interval)
    adapter = add_adapter(transformer, params, workdir=workdir)
    for p in adapter.parameters():
        p.data = p.data.to(trainable_dtype(params))
    checkpoints = CheckpointManager(workdir / CHECKPOINT_ROOT, job.fingerprint, params.checkpoints_total_limit)
    logger = mlflow_logger(params, workdir, job.run_id) if job.run_id and dist.is_main else None
    on_step = logger
    if logger is not None and job.run_id:
        on_step = with_periodic_validation(logger, params, workdir, transformer, job.run_id, dist.device)
    try:
        result = train_loop(params, transformer, adapter, data, dist=dist, checkpoints=checkpoints, on_step=on_step)
    finally:
        if logger is not None:
            logger.close()
    if dist.is_main:
        adapter.save(Path(job.adapter_dir))
        write_json(Path(job.result_file), asdict(result))
    dist.barrier()
    return result


def launch_command(params: Params, job_file: Path, workdir: Path) -> list[str]:
    """`accelerate launch` with the project's accelerate settings, running this module."""
    # The same interpreter as this process, so the launched workers see the same environment.
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    settings = params.accelerate
    if settings.config_file:
        config_file = Path(settings.config_file)
        config_file = config_file if config_file.is_absolute() else workdir / config_file
        if not config_file.is_file():
            raise ConfigError(f"params: accelerate.config_file = {settings.config_file!r}: file not found")
        cmd += ["--config_file", str(config_file)]
    else:
        # The torchrun launcher (`--multi_gpu`) starts the processes on CPU-only machines too; the
        # entry point then forms a gloo group. Autocast is the loop's job, not accelerate's.
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--num_processes", str(settings.num_processes)]
    if settings.main_process_port:
        cmd += ["--main_process_port", str(settings.main_process_port)]
    return cmd + ["-m", "kontext_core.train.run", "--job", str(job_file)]


def _terminate_with_parent() -> None:
    """Linux: SIGTERM the launcher when the stage process dies (even by SIGKILL); torchrun then
    stops its workers, so a killed stage never leaves orphans training on."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def launch(job: TrainJob, job_file: Path, params: Params, workdir: Path) -> TrainResult:
    """Run the job under `accelerate launch` (num_processes > 1) and read the main process's result."""
    job.save(job_file)
    cmd = launch_command(params, job_file, workdir)
    log.info("train: %s", " ".join(cmd))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
    subprocess.run(cmd, cwd=workdir, env=env, check=True, preexec_fn=_terminate_with_parent)
    return TrainResult(**json.loads(Path(job.result_file).read_text()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", required=True, help="job JSON written by the train stage")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_training(TrainJob.load(Path(args.job)), from_accelerate())


if __name__ == "__main__":
    main()
