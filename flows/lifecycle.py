"""The flow's share of interruption cleanup: one run per project, and Prefect runs a dead process left.

`locked_project` wraps the function that runs a `kontext-train` flow's stages (its first argument is
the run, `kontext_core.run.Run`): the flow holds the project lock
(kontext_core.project_lock) from its first stage to its last, removes what interrupted runs left on
disk, and marks the project's earlier `kontext-train` flow runs that are still Running or Pending as
Crashed: while this flow holds the lock, no other process of this project can be running them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kontext_core.lifecycle import StopRequested, clean_leftovers, stop_on_signals
from kontext_core.project_lock import project_lock

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
FLOW_NAME = "kontext-train"


def project_of(params_file: str | None, workdir: str | None) -> Path:
    if workdir:
        return Path(workdir).resolve()
    return Path(params_file or "params.yaml").resolve().parent


def crash_stale_flow_runs(project: Path, current: str | None) -> list[str]:
    """Mark this project's other Running/Pending `kontext-train` runs Crashed; returns their ids."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    crashed: list[str] = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))
            ),
            limit=200,
        )
        for run in runs:
            if str(run.id) == current:
                continue
            parameters = run.parameters or {}
            if project_of(parameters.get("params_file"), parameters.get("workdir")) != project:
                continue
            client.set_flow_run_state(
                run.id,
                Crashed(message="its process ended without finishing it (killed?); found by the next run"),
                force=True,
            )
            crashed.append(str(run.id))
            log.warning(
                "Prefect flow run %s (%s) was left %s by a dead process: marked Crashed",
                run.name,
                run.id,
                run.state_type.value if run.state_type else "?",
            )
    return crashed


def locked_project(fn: F) -> F:
    """Run `fn(run, ...)` holding the lock of the run's project, after cleaning up interrupted runs.

    SIGTERM/SIGINT inside it ask the stages to stop at their next safe point (Prefect's own SIGTERM
    bridge would mark the run Crashed at once while the stage thread trained on): the flow run then
    ends Cancelled, with the stop's one line as its message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        project = _bind(fn, args, kwargs)["run"].project
        with project_lock(project):
            clean_leftovers(project)
            try:
                from prefect.runtime import flow_run

                crash_stale_flow_runs(project, str(flow_run.id) if flow_run.id else None)
            except Exception as exc:  # no API reachable: cleanup is best effort, the run goes on
                log.warning("could not look for stale Prefect runs: %s", exc)
            with stop_on_signals():
                try:
                    return fn(*args, **kwargs)
                except StopRequested as exc:
                    from prefect.states import Cancelled

                    log.warning("%s", exc)
                    return Cancelled(message=str(exc))

    return wrapper  # type: ignore[return-value]


def _bind(fn: Callable[..., Any], args: tuple, kwargs: dict) -> dict[str, Any]:
    import inspect

    bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)
