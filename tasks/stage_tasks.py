"""One Prefect task per pipeline stage: version, retries and artifacts; no ML logic, no cache.

The task receives the run (kontext_core.run.Run: the validated params, the project) and, when the
run's leading walk took it, the stage's fingerprint. Whether the stage is up to date is the engine's
decision alone (`run_stage`: fingerprint + verified outputs); Prefect caches nothing, so a stage's
outputs are never trusted without the engine's checks; a task whose stage was up to date ends in
a Completed state named `Skipped`. The task version is the stage's code version
(the hash of its import closure).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from kontext_core.config import ConfigError
from kontext_core.lifecycle import check_stop, stop_signal
from kontext_core.run import Run
from kontext_core.stages import STAGES, Fingerprint, run_stage
from tasks.artifacts import publish_artifacts

log = logging.getLogger(__name__)

# The name of the (Completed) state of a stage task whose stage was up to date.
SKIPPED = "Skipped"


def _retry_unless_config_error(task: Task, task_run: Any, state: Any) -> bool:
    """A bad config fails the same way every time, and a stop request means stop: retry only other
    errors, and log the failure a retry will hide (with its traceback) as a warning."""
    if stop_signal() is not None:
        return False
    try:
        state.result()
    except ConfigError:
        return False
    except Exception:
        log.warning(
            "stage %s failed (attempt %s); Prefect retries it: the first failure is kept here",
            getattr(task, "name", "?"),
            getattr(task_run, "run_count", "?"),
            exc_info=True,
        )
        return True
    return True


def _run(
    name: str, run: Run, fingerprint: Fingerprint | None = None, upstream: dict[str, Any] | None = None
) -> dict[str, Any] | State:
    # `upstream` holds the upstream stages' results (their manifests): passing their futures is what
    # makes Prefect start the stage after them and gives the task run its parents in the UI's graph.
    # The stage itself reads its inputs from disk.
    check_stop(f"the start of stage {name}")  # after a stop request no new stage starts
    started = time.perf_counter()
    manifest = run_stage(name, workdir=run.project, params=run.params, fingerprint=fingerprint)
    if not manifest["skipped"]:
        publish_artifacts(name, run.project, manifest, run.params)
    # Wall time as the user waits for it: the fingerprint (unless the run's walk took it), the stage
    # or its up-to-date check, its artifacts.
    manifest = {**manifest, "wall_seconds": time.perf_counter() - started}
    if manifest["skipped"]:
        # The graph in the UI shows the engine's decision: a stage that was up to date ends `Skipped`.
        return Completed(data=manifest, name=SKIPPED)
    return manifest


def _stage_function(name: str) -> Any:
    """`_run` under the stage's own name: Prefect derives the task key from the function's name,
    so each stage gets its own key (one shared function gave all ten the same one)."""

    def stage(
        name: str, run: Run, fingerprint: Fingerprint | None = None, upstream: dict[str, Any] | None = None
    ) -> dict[str, Any] | State:
        return _run(name, run, fingerprint, upstream)

    stage.__name__ = stage.__qualname__ = f"stage_{name}"
    return stage


def make_stage_task(name: str) -> Task:
    spec = STAGES[name]
    return task(
        _stage_function(name),
        name=name,
        task_run_name=name,
        version=spec.code_version(),
        # The engine decides whether the stage is up to date; the manifest comes back in memory.
        cache_policy=NO_CACHE,
        persist_result=False,
        retry_condition_fn=_retry_unless_config_error,
        description=(spec.fn.__doc__ or "").strip(),
    )


def stage_task(name: str, run: Run) -> Task:
    """Stage `name`'s task with the run's retry settings (`prefect.task_retries`, a ConfigError or a
    stop request is never retried)."""
    if name not in STAGE_TASKS:  # a stage registered after this module was imported (a plugin)
        STAGE_TASKS[name] = make_stage_task(name)
    return STAGE_TASKS[name].with_options(
        retries=run.params.prefect.task_retries,
        retry_delay_seconds=run.params.prefect.retry_delay_seconds,
    )


STAGE_TASKS: dict[str, Task] = {name: make_stage_task(name) for name in STAGES}
