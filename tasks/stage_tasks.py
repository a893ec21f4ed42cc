"""One Prefect task per pipeline stage: version, cache key, retries and artifacts; no ML logic.

The flow takes each stage's fingerprint once and hands it to the task: the task's cache key and the
stage's up-to-date check use that same value (never a pickle of a model). The task version is the
stage's code version (the hash of its import closure).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.context import TaskRunContext

from kontext_core.config import ConfigError, Params
from kontext_core.lifecycle import stop_signal
from kontext_core.stages import STAGES, Fingerprint, run_stage
from tasks.artifacts import publish_artifacts

log = logging.getLogger(__name__)


def stage_cache_key(name: str, workdir: str, fingerprint: str) -> str:
    where = hashlib.sha256(str(Path(workdir).resolve()).encode()).hexdigest()[:12]
    return f"kontext-{name}-{where}-{fingerprint}"


def _cache_key_fn(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return stage_cache_key(parameters["name"], parameters["workdir"], parameters["fingerprint"].value)


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
    name: str,
    params: Params,
    workdir: str,
    fingerprint: Fingerprint,
    upstream: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # `upstream` holds the upstream stages' results (their manifests): passing their futures is what
    # gives the task run its parents in the UI's graph. The stage itself reads its inputs from disk.
    manifest = run_stage(name, workdir=workdir, params=params, fingerprint=fingerprint)
    if not manifest["skipped"]:
        publish_artifacts(name, Path(workdir), manifest, params)
    return manifest


def _stage_function(name: str) -> Any:
    """`_run` under the stage's own name: Prefect derives the task key from the function's name,
    so each stage gets its own key (one shared function gave all ten the same one)."""

    def run(
        name: str,
        params: Params,
        workdir: str,
        fingerprint: Fingerprint,
        upstream: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return _run(name, params, workdir, fingerprint, upstream)

    run.__name__ = run.__qualname__ = f"stage_{name}"
    return run


def make_stage_task(name: str) -> Task:
    spec = STAGES[name]
    return task(
        _stage_function(name),
        name=name,
        task_run_name=name,
        version=spec.code_version(),
        cache_key_fn=_cache_key_fn,
        persist_result=True,
        result_serializer="json",
        retry_condition_fn=_retry_unless_config_error,
        description=(spec.fn.__doc__ or "").strip(),
    )


STAGE_TASKS: dict[str, Task] = {name: make_stage_task(name) for name in STAGES}
