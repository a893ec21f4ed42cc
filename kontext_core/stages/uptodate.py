"""Which stages are up to date, walked in order: the one check the flow and `kontext run` share.

A stage is up to date when its fingerprint (as the project stands now) matches its manifest and its
recorded outputs pass the cheap checks (`outputs_intact`), the same decision `run_spec` makes before
it skips a stage. The walk stops at the first stage that is not: its downstream fingerprints would
change once it runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kontext_core.config import Params
from kontext_core.stages.engine import Fingerprint, outputs_intact, read_manifest
from kontext_core.stages.registry import STAGE_ORDER, fingerprint


@dataclass(frozen=True)
class StageCheck:
    name: str
    fingerprint: Fingerprint
    up_to_date: bool
    seconds: float


def check_in_order(params: Params, project: Path) -> Iterator[StageCheck]:
    """Each stage in order with its fingerprint and whether it would be skipped; ends after the first
    stage that would run. A config or missing-input error propagates to the caller."""
    for name in STAGE_ORDER:
        started = time.perf_counter()
        fp = fingerprint(name, params, project)
        up_to_date = outputs_intact(name, project, fp.value)
        yield StageCheck(name, fp, up_to_date, time.perf_counter() - started)
        if not up_to_date:
            return


def all_up_to_date(params: Params, project: Path) -> dict[str, dict[str, Any]] | None:
    """Every stage's stored manifest, marked skipped with the seconds its check took, when every stage
    would be skipped; None when one would run or the check itself fails (the stage reports that)."""
    manifests: dict[str, dict[str, Any]] = {}
    try:
        for check in check_in_order(params, project):
            manifest = read_manifest(project, check.name) if check.up_to_date else None
            if manifest is None:
                return None
            manifests[check.name] = {**manifest, "skipped": True, "wall_seconds": check.seconds}
    except Exception:  # noqa: BLE001 - a config or input error: the normal run reports it properly
        return None
    return manifests
