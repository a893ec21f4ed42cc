"""The run: built once by the entry point (`kontext run`, `kontext stage`, a flow started from a
deployment or the UI) and handed down; nothing below reads or validates the params file again.

A `Run` holds the params with the run's settings layered over the file (validated once), the
project folder, the params file it came from and the settings used (a validated `RunOverrides`).
`walked()` adds the leading up-to-date walk (`stages.uptodate.leading_checks`), taken once per run:
`kontext run` takes it for its fast path and the flow reuses it for its "every stage is up to date"
decision and the leading stages' fingerprints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kontext_core.config import ConfigError, Params, read_params_file
from kontext_core.config.overrides import RunOverrides, check_overrides, layered_params
from kontext_core.stages.engine import Fingerprint
from kontext_core.stages.uptodate import StageCheck, every_stage_up_to_date, leading_checks, stored_manifests


def run_paths(params_file: str | Path, workdir: str | Path | None = None) -> tuple[Path, Path]:
    """(the params file, the project folder): the file relative to `workdir` when given; the project is
    `workdir`, else the params file's folder."""
    params_path = Path(params_file)
    if not params_path.is_absolute() and workdir:
        params_path = Path(workdir) / params_path
    params_path = params_path.resolve()
    return params_path, Path(workdir).resolve() if workdir else params_path.parent


@dataclass(frozen=True)
class Run:
    """One run's configuration, validated once; frozen (hand it down, do not change it)."""

    params: Params
    project: Path
    params_path: Path
    settings: RunOverrides
    # The leading walk (None: not taken yet): every stage up to the first that would run.
    checks: tuple[StageCheck, ...] | None = None

    @property
    def overrides(self) -> dict[str, Any]:
        """The settings this run sets over the params file (what the run records as its overrides)."""
        return self.settings.model_dump(exclude_none=True)

    def is_for(self, params_file: str | Path, workdir: str | Path | None, settings: RunOverrides) -> bool:
        """Whether this run is the one these flow parameters describe."""
        return run_paths(params_file, workdir) == (self.params_path, self.project) and settings == self.settings

    def walked(self) -> Run:
        """This run with its leading walk (taken here unless it was taken already)."""
        if self.checks is not None:
            return self
        return replace(self, checks=leading_checks(self.params, self.project))

    @property
    def up_to_date(self) -> bool:
        """The walk found every stage up to date: nothing would run."""
        return self.checks is not None and every_stage_up_to_date(self.checks)

    def stored_manifests(self) -> dict[str, dict[str, Any]] | None:
        """The stages' stored manifests when every stage is up to date, else None."""
        return stored_manifests(self.checks, self.project) if self.checks is not None else None

    def check(self, name: str) -> StageCheck | None:
        """The walk's check of stage `name`, when the walk reached it."""
        return next((check for check in self.checks or () if check.name == name), None)

    def fingerprint(self, name: str) -> Fingerprint | None:
        """Stage `name`'s fingerprint from the walk (still valid: its upstream stages are up to date),
        or None: the stage takes it when its upstream stages are done."""
        check = self.check(name)
        return check.fingerprint if check is not None else None


def preflight(params: Params, project: Path) -> None:
    """Checks of a run's settings that need no stage to have run: one line per problem."""
    from kontext_core.model.adapter_kinds import ADAPTER_KINDS

    problems = []
    if params.lora_type not in ADAPTER_KINDS:
        problems.append(f"lora_type = {params.lora_type!r}: unknown adapter kind; allowed: {', '.join(ADAPTER_KINDS)}")
    dataset_file = project / params.data_backend_config
    if not dataset_file.is_file():
        problems.append(f"data_backend_config = {params.data_backend_config!r}: no such file in the project")
    if problems:
        raise ConfigError(problems)


def build_run(
    params_file: str | Path,
    workdir: str | Path | None = None,
    settings: RunOverrides | Mapping[str, Any] | None = None,
    *,
    check: bool = True,
) -> Run:
    """Read the params file once, layer the run's settings over it, validate once; with `check`, the
    pre-flight checks of a pipeline run too (`kontext stage` leaves them to the stage).

    `settings` already validated (a RunOverrides, e.g. the flow's parameter) are used as they are; a
    mapping is checked first. Raises ConfigError, one line per problem.
    """
    params_path, project = run_paths(params_file, workdir)
    if not isinstance(settings, RunOverrides):
        settings = check_overrides(dict(settings or {}))
    params, _ = layered_params(read_params_file(params_path), settings, where=params_path.name)
    if check:
        preflight(params, project)
    return Run(params=params, project=project, params_path=params_path, settings=settings)
