"""The closing summary of `kontext run`: each stage with ran/skipped and its seconds, then each stage's
own lines (its spec's `summary`: the final training loss, the validation metric, the champion
decision), read from the stages' manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def run_outcome(manifests: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """Loss, metric and champion decision from the train, validate and register manifests.

    A skipped stage's manifest is the one its last run wrote, so a no-op run still reports them.
    """
    train = manifests.get("train", {}).get("info", {})
    validate = manifests.get("validate", {}).get("info", {})
    register = manifests.get("register", {}).get("info", {})
    return {
        "final_loss": train.get("loss_last"),
        "steps": train.get("steps"),
        "metric": metric,
        "metric_value": validate.get(metric),
        "metric_base": validate.get(f"{metric}_base"),
        # What the grids show, whatever the registry ranks by: PSNR of the edits against the targets.
        "psnr": validate.get("psnr"),
        "psnr_base": validate.get("psnr_base"),
        "model_uri": register.get("model_uri"),
        "became_champion": register.get("became_champion"),
        "previous_champion_metric": register.get("champion_metric"),
    }


def registered_run_id(project: Path) -> str:
    """The MLflow run the registered outputs were logged to (named by the register stage's output)."""
    from kontext_core.stages.register import REGISTER_DIR

    return json.loads((project / REGISTER_DIR / "registration.json").read_text())["run_id"]


def pipeline_result(
    manifests: dict[str, dict[str, Any]],
    metric: str,
    *,
    run_id: str | None,
    reused: bool,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """What a `kontext-train` run returns (and `kontext run` prints), from the stages' manifests."""
    registration = manifests.get("register", {}).get("info", {})
    return {
        "mlflow_run_id": run_id,
        "mlflow_run_reused": reused,
        "decision": registration.get("decision"),
        "reason": registration.get("reason"),
        "model_uri": registration.get("model_uri"),
        "alias_uri": registration.get("alias_uri"),
        "overrides": overrides,
        "approval": None,
        "stages": {n: ("skipped" if m.get("skipped") else "ran") for n, m in manifests.items()},
        "prefect_states": {n: m.get("prefect_state") for n, m in manifests.items()},
        "seconds": {n: round(m["wall_seconds"], 3) for n, m in manifests.items()},
        "outcome": run_outcome(manifests, metric),
        "summary": outcome_lines(manifests, metric),
    }


def outcome_lines(manifests: dict[str, dict[str, Any]], metric: str) -> list[str]:
    """Each stage's own lines for the closing summary (its spec's `summary`), in pipeline order."""
    from kontext_core.stages import STAGES

    return [
        line
        for name, spec in STAGES.items()
        if name in manifests
        for line in spec.summary_lines(manifests[name], metric)
    ]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The per-stage table, then what the stages report (final loss, validation metric, champion)."""
    seconds = result.get("seconds", {})
    lines = [f"{'stage':<12}{'status':<9}{'seconds':>9}"]
    for name, status in result["stages"].items():
        lines.append(f"{name:<12}{status:<9}{seconds.get(name, float('nan')):>9.2f}")
    lines.append(f"{'total':<21}{sum(seconds.values()):>9.2f}")
    return lines + list(result.get("summary", []))


def _short(value: Any) -> str | None:
    """A manifest info value as a few characters, or None for what does not fit on a line."""
    if isinstance(value, bool) or isinstance(value, int) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value if len(value) <= 60 else None
    if isinstance(value, dict) and all(isinstance(v, int | float | str | bool) for v in value.values()):
        parts = [f"{k}={_short(v)}" for k, v in value.items()]
        return "{" + ", ".join(parts) + "}" if len(parts) <= 8 else None
    return None


def stage_summary(name: str, manifest: dict[str, Any]) -> str:
    """One line per stage for the run log: ran or skipped, seconds, fingerprint and the stage's counts."""
    status = "skipped (up to date)" if manifest.get("skipped") else "ran"
    seconds = manifest.get("wall_seconds")
    head = f"stage {name}: {status}" + (f" in {seconds:.1f}s" if seconds is not None else "")
    head += f", fingerprint {str(manifest.get('fingerprint', ''))[:12]}"
    counts = []
    for key, value in (manifest.get("info") or {}).items():
        text = _short(value)
        if text is not None:
            counts.append(f"{key}={text}")
    return head + (": " + ", ".join(counts) if counts else "")


def summary_markdown(result: dict[str, Any], params_used: dict[str, Any]) -> str:
    """The run summary artifact: the settings this run used, the stage table, the outcome."""
    lines = ["# kontext-train run", ""]
    overrides = result.get("overrides") or {}
    lines += ["## Settings", "", "| key | value | from |", "|---|---|---|"]
    for key, value in params_used.items():
        lines.append(f"| {key} | `{value}` | {'run override' if key in overrides else 'params file'} |")
    lines += ["", "## Stages", "", "```", *summary_lines(result), "```", ""]
    workspace = result.get("workspace") or {}
    lines += [f"- {line}" for line in (workspace.get("workspace"), workspace.get("dvc_lock")) if line]
    if workspace.get("workspace") or workspace.get("dvc_lock"):
        lines.append("")
    if result.get("approval"):
        approval = result["approval"]
        lines.append(
            f"Approval: **{approval.get('approval')}**"
            + (f": {approval['approval_note']}" if approval.get("approval_note") else "")
        )
        lines.append("")
    if result.get("mlflow_run_id"):
        reused = " (reused: nothing ran)" if result.get("mlflow_run_reused") else ""
        lines.append(f"MLflow run: `{result['mlflow_run_id']}`{reused}")
    return "\n".join(lines) + "\n"


def publish_run_summary(params: Any, result: dict[str, Any]) -> None:
    """One summary artifact per flow run (also when every stage was cached), plus a link to its MLflow
    run and a table of the settings the run used."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    from kontext_core.config.overrides import OVERRIDE_KEYS
    from kontext_core.tracking.links import safe_run_link

    used = {key: getattr(params, key) for key in OVERRIDE_KEYS}
    overrides = result.get("overrides") or {}
    create_table_artifact(
        [
            {"key": k, "value": str(v), "from": "run override" if k in overrides else "params file"}
            for k, v in used.items()
        ],
        key="kontext-run-settings",
        description="the run settings this flow run used (overrides layered over the params file)",
    )
    create_markdown_artifact(
        summary_markdown(result, used), key="kontext-run-summary", description="kontext-train run summary"
    )
    # A reused run may live in another store (a fresh clone after `dvc pull` has the outputs, not the
    # run): no link then, rather than a failed flow.
    link = safe_run_link(result.get("mlflow_run_id"))
    if link is None:
        return
    create_link_artifact(
        link,
        link_text=f"MLflow run {result['mlflow_run_id']}",
        key="kontext-mlflow-run",
        description="the MLflow run of this flow run (params, metrics, grids, lineage)",
    )
