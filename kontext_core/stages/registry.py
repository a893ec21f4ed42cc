"""The table of stages, in execution order, and the calls that run one of them by name.

Adding a stage is one module (its body, its spec with its roles, its path constants) plus one line:
in `_MODULES` for a stage of this package, or `register_stage(module, after="validate")` for a stage
from elsewhere (a plugin). Either way it is in `STAGES` and `STAGE_ORDER`, so the engine, the
generated dvc.yaml, `kontext stage NAME` and the flow run it, in a process that has registered it (the
flow's Prefect tasks are made when `tasks.stage_tasks` is imported: register before that).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from kontext_core.config import Params, load_params
from kontext_core.lifecycle import clean_leftovers
from kontext_core.project_lock import project_lock
from kontext_core.stages import cache_text, cache_vae, degrade, fetch, init, pair, quantize, register, train, validate
from kontext_core.stages.engine import Fingerprint, StageSpec, compute_fingerprint, run_spec

_MODULES = [init, fetch, pair, degrade, cache_vae, cache_text, quantize, train, validate, register]

STAGES: dict[str, StageSpec] = {module.SPEC.name: module.SPEC for module in _MODULES}
STAGE_ORDER = list(STAGES)


def register_stage(stage: ModuleType | StageSpec, *, after: str | None = None) -> StageSpec:
    """Add a stage (its module, which defines `SPEC`, or the spec) after stage `after` (default: last).

    `STAGES` and `STAGE_ORDER` are changed in place, so every holder of them sees the new stage. What it
    reads must be declared products of stages before it.
    """
    spec: StageSpec = stage if isinstance(stage, StageSpec) else stage.SPEC
    if spec.name in STAGES:
        raise ValueError(f"stage {spec.name!r} is registered already")
    order = list(STAGES)
    if after is not None and after not in STAGES:
        raise ValueError(f"register_stage(after={after!r}): unknown stage; allowed: {', '.join(order)}")
    position = order.index(after) + 1 if after is not None else len(order)
    missing = [up for up in spec.upstream if up not in order[:position]]
    if missing:
        raise ValueError(f"stage {spec.name!r} reads from {', '.join(missing)}, which would not run before it")
    _set_order([*(STAGES[n] for n in order[:position]), spec, *(STAGES[n] for n in order[position:])])
    return spec


def unregister_stage(name: str) -> StageSpec:
    """Remove a registered stage (a plugin's, in tests); the stages that read from it must go first."""
    readers = [other for other, spec in STAGES.items() if name in spec.upstream]
    if readers:
        raise ValueError(f"stage {name!r} is read by {', '.join(readers)}")
    spec = STAGES[name]
    _set_order([s for n, s in STAGES.items() if n != name])
    return spec


def _set_order(specs: list[StageSpec]) -> None:
    STAGES.clear()
    STAGES.update((spec.name, spec) for spec in specs)
    STAGE_ORDER[:] = list(STAGES)


def fingerprint(name: str, params: Params, workdir: Path) -> Fingerprint:
    """The input fingerprint of stage `name` as the project stands now."""
    return compute_fingerprint(STAGES[name], STAGES, params, Path(workdir))


def run_stage(
    name: str,
    params_file: Path | str | None = None,
    workdir: Path | str | None = None,
    force: bool = False,
    *,
    params: Params | None = None,
    fingerprint: Fingerprint | None = None,
) -> dict[str, Any]:
    """Run stage `name` (or skip it when its fingerprint and outputs are unchanged).

    The params come from `params` or `params_file`; the project is `workdir`, else the params file's
    folder. A caller that already took the fingerprint (the flow) passes it, so it is taken once.
    The stage runs holding the project lock (kontext_core.project_lock): another process running in
    the same project makes it refuse (or wait, KONTEXT_LOCK_WAIT).
    """
    if params is None:
        if params_file is None:
            raise ValueError("run_stage needs params or params_file")
        params_file = Path(params_file).resolve()
        params = load_params(params_file)
    if workdir is None:
        if params_file is None:
            raise ValueError("run_stage needs workdir when params are given directly")
        workdir = Path(params_file).resolve().parent
    project = Path(workdir).resolve()
    # One pipeline per project at a time; the first holder in a process clears dead runs' leftovers.
    # The lock comes first: a refused run reads nothing and says nothing but the refusal.
    with project_lock(project) as first:
        if first:
            clean_leftovers(project)
        prepare_datasets(params, project)
        return run_spec(STAGES[name], STAGES, params, project, force=force, fingerprint=fingerprint)


def prepare_datasets(params: Params, workdir: Path) -> None:
    """Tell the dataset backends about the enabled entries (an aws entry's endpoint and keys), so any
    stage can read the `s3://` references in its tables. A file that does not load is left to the
    stage that reads it, which reports it properly."""
    from kontext_core.data.backends import prepare_backends
    from kontext_core.stages.datasets import stage_datasets

    try:
        # The stage's one load of the file: its fingerprint and body get the same checked entries.
        datasets = stage_datasets(params, workdir)
    except Exception:  # noqa: BLE001 - reported by the stage itself
        return
    prepare_backends(datasets)
