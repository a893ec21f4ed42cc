"""Human approval of promotion (`registry.require_approval: true`).

After register has scored the challenger against the champion on the same eval set and registered
the version, a winning version waits: the flow run pauses with a form in the Prefect UI (approve or
reject, a note) whose description shows both versions' metrics and the validation grids. Approve
moves the alias, reject leaves it; either is recorded on the version
(`kontext_core.tracking.registry.record_approval`). Unanswered after
`registry.approval_timeout_seconds`, `registry.approval_on_timeout` decides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from kontext_core.config import Params
from kontext_core.stages import STAGES
from kontext_core.tracking.registry import record_approval
from kontext_core.validate.metrics import METRICS

# Seconds between the paused run's looks at its state (Prefect's default is 10).
POLL_SECONDS = 3


class ApprovalInput(RunInput):
    approve: bool = Field(False, description="On: move the champion alias to this version. Off: keep the champion.")
    note: str = Field("", description="Why (recorded on the model version).")
    reviewer: str = Field("", description="Who decided (recorded on the model version).")


def approval_description(params: Params, project: Path, manifests: dict[str, Any]) -> str:
    """The form's text: challenger and champion scores, the validation metrics, the grids' location."""
    info = manifests["register"]["info"]
    validate = manifests["validate"]["info"]
    metric = info.get("metric", params.registry.metric)
    champion = info.get("champion_version")
    lines = [
        f"## Promote `{info['model_uri']}` to `@{params.registry.champion_alias}`?",
        "",
        f"**{info.get('reason', '')}**",
        "",
        f"| | version | {metric} |",
        "|---|---|---|",
        f"| challenger | {info['version']} | {info.get('challenger_score')} |",
    ]
    if champion:
        lines.append(f"| champion | {champion} | {info.get('champion_metric')} |")
    lines += ["", "| validation | base model | LoRA |", "|---|---|---|"]
    for name in METRICS:  # every registered metric the validation scored
        if name in validate:
            lines.append(f"| {name} | {validate.get(f'{name}_base')} | {validate.get(name)} |")
    per_pair = project / STAGES["validate"].products["per_pair"]
    if per_pair.exists():
        pairs = [row["pair_id"] for row in json.loads(per_pair.read_text())]
        lines += [
            "",
            f"Grids (reference | base | lora | target) of {len(pairs)} eval pairs: the "
            "`kontext-validation-grids` artifact of this run, and validation/grids in its MLflow run.",
        ]
    return "\n".join(lines) + "\n"


def ask_for_approval(params: Params, project: Path, manifests: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Pause until a person answers (or the timeout policy does); record the answer; return it."""
    logger = get_run_logger()
    info = manifests["register"]["info"]
    timeout = params.registry.approval_timeout_seconds
    form = ApprovalInput.with_initial_data(description=approval_description(params, project, manifests), approve=False)
    logger.info(
        "version %s awaits approval: resume this flow run in the Prefect UI (approve or reject) within %ss; then: %s",
        info["version"],
        timeout,
        params.registry.approval_on_timeout,
    )
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout, poll_interval=min(POLL_SECONDS, timeout))
        approved, note, by = bool(answer.approve), answer.note, answer.reviewer
    except FlowPauseTimeout:
        approved = params.registry.approval_on_timeout == "approve"
        note, by = (
            f"no answer within {timeout}s: approval_on_timeout = {params.registry.approval_on_timeout}",
            "timeout",
        )
        logger.warning("version %s: %s", info["version"], note)
    return record_approval(params, str(info["version"]), approved, note, by, run_id)
