"""Which stages are up to date, walked in order: the one walk a run takes (`kontext_core.run.Run.walked`).

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


def leading_checks(params: Params, project: Path) -> tuple[StageCheck, ...]:
    """The walk of `check_in_order`, taken once per run: every stage up to the first that would run.

    A config or missing-input error ends the walk early: the stage that meets it reports it properly
    when it runs. A stage's fingerprint from the walk stays valid for the run (only stages before it,
    all up to date, are its upstream), so the stage does not take it again.
    """
    checks: list[StageCheck] = []
    try:
        for check in check_in_order(params, project):
            checks.append(check)
    except Exception:  # noqa: BLE001 - reported by the stage itself
        pass
    return tuple(checks)


def every_stage_up_to_date(checks: tuple[StageCheck, ...]) -> bool:
    """The walk reached the last stage and found every stage up to date."""
    return len(checks) == len(STAGE_ORDER) and all(check.up_to_date for check in checks)


def stored_manifests(checks: tuple[StageCheck, ...], project: Path) -> dict[str, dict[str, Any]] | None:
    """Every stage's stored manifest, marked skipped with the seconds its check took, when the walk found
    every stage up to date; None otherwise."""
    if not every_stage_up_to_date(checks):
        return None
    manifests: dict[str, dict[str, Any]] = {}
    for check in checks:
        manifest = read_manifest(project, check.name)
        if manifest is None:
            return None
        manifests[check.name] = {**manifest, "skipped": True, "wall_seconds": check.seconds}
    return manifests
