"""Placement across machines: data stages on a CPU work pool, train/validate/register on a GPU pool.

`kontext-train-placed` is a light parent flow (it runs on the CPU pool): it checks the run settings,
then starts the `kontext-stages` deployment of each stage group on its pool with `run_deployment`
and waits for it. Both groups work in the same project (one shared checkout or volume), so the GPU
group finds the data group's outputs, and the stage contract skips what is current as always.
"""

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from pydantic import Field

from flows.form import SETTINGS, RunSettings
from flows.train_flow import run_pipeline, the_run
from kontext_core.config import Params
from kontext_core.stages import STAGE_ORDER, STAGES

STAGES_FLOW = "kontext-stages"
# The deployments of `kontext-stages`, one per stage group (infra/prefect.yaml).
GROUP_DEPLOYMENTS = {"data": "kontext-data", "gpu": "kontext-gpu"}
# The stages that always need the accelerator (train, validate, register), from their specs.
GPU_STAGES = tuple(name for name, spec in STAGES.items() if spec.accelerator is True)


def stage_groups(params: Params) -> dict[str, list[str]]:
    """Which stages run on which pool: the GPU group holds the stages whose spec needs an accelerator
    with these params (train, validate, register; quantize with `quantize_via: accelerator`)."""
    gpu = [name for name in STAGE_ORDER if STAGES[name].needs_accelerator(params)]
    return {
        "data": [name for name in STAGE_ORDER if name not in gpu],
        "gpu": [name for name in STAGE_ORDER if name in gpu],
    }


@flow(name=STAGES_FLOW)
def kontext_stages(
    group: Literal["data", "gpu"] = Field("data", description="The stage group to run here: data (CPU) or gpu."),
    params_file: str = Field("params.yaml", description="The params file, relative to workdir."),
    workdir: str | None = Field(None, description="The project folder; empty: the params file's folder."),
    settings: RunSettings = SETTINGS,
) -> dict[str, Any]:
    """One stage group of a placed run; the other group's outputs must be in the project."""
    run = the_run(params_file, workdir, settings)
    return run_pipeline(run, only=stage_groups(run.params)[group])


@flow(name="kontext-train-placed")
def kontext_train_placed(
    params_file: str = Field("params.yaml", description="The params file, relative to workdir."),
    workdir: str | None = Field(None, description="The project folder (shared by both pools' workers)."),
    settings: RunSettings = SETTINGS,
) -> dict[str, Any]:
    """Fine-tune with the data stages on the CPU pool and training on the GPU pool."""
    logger = get_run_logger()
    the_run(params_file, workdir, settings)  # a bad setting fails here, before any group starts
    # Each group's flow run builds the run again in its own process (on its own machine).
    given = settings.model_dump(mode="json", exclude_none=True)
    parameters = {"params_file": params_file, "workdir": workdir, "settings": given}
    results: dict[str, Any] = {}
    for group, deployment in GROUP_DEPLOYMENTS.items():
        logger.info("stage group %s: starting deployment %s/%s", group, STAGES_FLOW, deployment)
        child = run_deployment(
            f"{STAGES_FLOW}/{deployment}",
            parameters={"group": group, **parameters},
            timeout=None,
        )
        if child.state is None or not child.state.is_completed():
            state = child.state.name if child.state else "unknown"
            raise RuntimeError(f"stage group {group} ({deployment}) ended {state}: see flow run {child.name}")
        results[group] = {"flow_run_id": str(child.id), "work_pool": child.work_pool_name, "state": child.state.name}
        logger.info("stage group %s: %s on work pool %s", group, child.state.name, child.work_pool_name)
    return results
