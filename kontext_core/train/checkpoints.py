"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a folder `checkpoint-<step>` written atomically (temp folder, then rename):
`adapter.safetensors` (the adapter's tensors), `optimizer.safetensors` + `optimizer.json`,
`scheduler.json`, `rng.safetensors` + `rng.json` (torch, CUDA and Python generator states) and
`trainer_state.json` (step, data position, losses so far, and the fingerprint of the run). Tensors
go to safetensors and structure to JSON: nothing is pickled.

Checkpoints of one run live in `<root>/<fingerprint prefix>/`; a run only resumes from a checkpoint
whose stored fingerprint equals its own, so changed params never continue another run's state.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kontext_core.config import ConfigError
from kontext_core.fsutil import atomic_dir
from kontext_core.train.optimizers import optimizer_state_from_files, optimizer_state_to_files
from kontext_core.train.sampler import Position
from kontext_core.train.schedulers import load_scheduler_state, scheduler_state

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainerState:
    step: int = 0
    position: Position = field(default_factory=Position)
    losses: list[float] = field(default_factory=list)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_step(path: Path) -> int | None:
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


class CheckpointManager:
    def __init__(self, root: Path, fingerprint: str, limit: int | None = None) -> None:
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.limit = limit
        self.run_dir = self.root / fingerprint[:16]

    def checkpoints(self) -> list[Path]:
        """This run's complete checkpoints, oldest first."""
        if not self.run_dir.is_dir():
            return []
        found = [p for p in self.run_dir.iterdir() if checkpoint_step(p) is not None and (p / STATE_FILE).exists()]
        return sorted(found, key=lambda p: checkpoint_step(p) or 0)

    def save(
        self,
        step: int,
        adapter,
        optimizer,
        scheduler,
        state: TrainerState,
        extra: dict | None = None,
        tensors: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> Path:
        """`tensors`: further named tensor sets (e.g. the EMA weights), each as `<name>.safetensors`."""
        dest = self.run_dir / f"checkpoint-{step}"
        with atomic_dir(dest) as tmp:
            save_file(adapter.state_dict(), tmp / "adapter.safetensors")
            for name, named in (tensors or {}).items():
                save_file(named, tmp / f"{name}.safetensors")
            opt_tensors, opt_meta = optimizer_state_to_files(optimizer.state_dict())
            save_file(opt_tensors, tmp / "optimizer.safetensors")
            _dump(tmp / "optimizer.json", opt_meta)
            _dump(tmp / "scheduler.json", scheduler_state(scheduler))
            rng_tensors, rng_meta = rng_state()
            save_file(rng_tensors, tmp / "rng.safetensors")
            _dump(tmp / "rng.json", rng_meta)
            # Written last: a folder without it is never taken for a checkpoint.
            _dump(
                tmp / STATE_FILE,
                {
                    "fingerprint": self.fingerprint,
                    "step": state.step,
                    "position": {"epoch": state.position.epoch, "index": state.position.index},
                    "losses": state.losses,
                    **(extra or {}),
                },
            )
        self._prune()
        log.info("checkpoint saved: %s", dest)
        return dest

    def _prune(self) -> None:
        # Temp folders of a save that a killed process never finished.
        for stale in self.run_dir.glob(".checkpoint-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.limit is None:
            return
        for old in self.checkpoints()[: -self.limit]:
            shutil.rmtree(old, ignore_errors=True)

    def resolve(self, resume: str | None) -> Path | None:
        """The checkpoint to resume from: `latest` of this run, an explicit folder, or none."""
        if resume is None:
            return None
        if resume == "latest":
            mine = self.checkpoints()
            others = (
                [p for p in self.root.glob("*/checkpoint-*") if p.parent != self.run_dir] if self.root.is_dir() else []
            )
            if others:
                log.info(
                    "resume_from_checkpoint latest: ignoring %d checkpoint(s) of runs with other params/inputs",
                    len(others),
                )
            if not mine:
                log.info("resume_from_checkpoint latest: no checkpoint of this run yet; starting fresh")
                return None
            return mine[-1]
        path = Path(resume)
        if not (path / STATE_FILE).exists():
            raise ConfigError(
                f"params: resume_from_checkpoint = {resume!r}: not a checkpoint folder ({STATE_FILE} missing)"
            )
        stored = json.loads((path / STATE_FILE).read_text()).get("fingerprint")
        if stored != self.fingerprint:
            raise ConfigError(
                f"params: resume_from_checkpoint = {resume!r}: written by a run with other params or inputs "
                f"(fingerprint {str(stored)[:12]}, this run {self.fingerprint[:12]}); refusing to resume from it"
            )
        return path

    @staticmethod
    def load(path: Path, adapter, optimizer, scheduler) -> TrainerState:
        path = Path(path)
        adapter.load_state_dict(load_file(path / "adapter.safetensors"))
        opt_meta = json.loads((path / "optimizer.json").read_text())
        optimizer.load_state_dict(optimizer_state_from_files(load_file(path / "optimizer.safetensors"), opt_meta))
        load_scheduler_state(scheduler, json.loads((path / "scheduler.json").read_text()))
        set_rng_state(load_file(path / "rng.safetensors"), json.loads((path / "rng.json").read_text()))
        meta = json.loads((path / STATE_FILE).read_text())
        log.info("resumed from %s (step %d)", path, meta["step"])
        return TrainerState(step=meta["step"], position=Position(**meta["position"]), losses=list(meta["losses"]))


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
