"""The data watch: a flow that emits a Prefect event when a project's datasets change.

It takes the same dataset identities the `fetch` stage fingerprints (`dataset_inputs`: the dataset
file's hash and, per dataset, what its backend reports: a folder digest for local folders and files,
the object listing for S3, the commit a hub id's revision resolves to), compares them with what it saw last time
(`cache/watch/datasets.json`) and, when something changed, emits `kontext.data.changed` for the
project. The `kontext-train` deployment's trigger (flows/deployments.py, infra/prefect.yaml) starts a
training run on that event; in that run fetch and what follows re-run, the stages before it are skipped.
"""

import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.events import emit_event
from pydantic import Field

from flows.form import RunSettings
from flows.train_flow import the_run
from kontext_core.config import Params
from kontext_core.fsutil import write_json
from kontext_core.stages.fetch import dataset_inputs

DATA_CHANGED_EVENT = "kontext.data.changed"
WATCH_STATE = "cache/watch/datasets.json"


def project_resource_id(params: Params) -> str:
    """The event's resource: the project, named by its registered model (the same on every machine)."""
    return f"kontext.project.{params.registry.model_name}"


def changed_keys(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return sorted(key for key in set(previous) | set(current) if previous.get(key) != current.get(key))


@flow(name="kontext-data-watch")
def kontext_data_watch(
    params_file: str = Field("params.yaml", description="The params file, relative to workdir."),
    workdir: str | None = Field(None, description="The project folder; empty: the params file's folder."),
) -> dict[str, Any]:
    """Emit `kontext.data.changed` when the project's datasets changed since the last look."""
    logger = get_run_logger()
    run = the_run(params_file, workdir, RunSettings())
    params, project = run.params, run.project
    try:
        current = json.loads(json.dumps(dataset_inputs(params, project), sort_keys=True, default=str))
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        logger.warning("datasets not readable yet (%s): nothing to compare", exc)
        return {"changed": [], "event": None}
    state_file = project / WATCH_STATE
    previous = json.loads(state_file.read_text()) if state_file.exists() else None
    state_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(state_file, current)
    if previous is None:
        logger.info("first look at %d dataset identities: recorded, no event", len(current))
        return {"changed": [], "event": None}
    changed = changed_keys(previous, current)
    if not changed:
        logger.info("datasets unchanged")
        return {"changed": [], "event": None}
    event = emit_event(
        event=DATA_CHANGED_EVENT,
        resource={"prefect.resource.id": project_resource_id(params), "prefect.resource.name": project.name},
        payload={"changed": changed, "params_file": str(run.params_path), "workdir": str(project)},
    )
    logger.info("datasets changed (%s): emitted %s", ", ".join(changed), DATA_CHANGED_EVENT)
    return {"changed": changed, "event": str(event.id) if event else None}
