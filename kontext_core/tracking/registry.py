"""The MLflow model registry: log the adapter as a pyfunc edit model, register it, decide the alias.

The decision is fair: the challenger and the champion are scored on the same eval set with the
same settings. The champion's score is reused only when it was measured on the same exam (its
`kontext.eval_fingerprint` tag equals this run's); otherwise the champion is re-scored now. A tie
or a loss keeps the champion. The decision, both scores and the fingerprint go on the new version
(tags and description), on the champion's re-scored tags, and on the run.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from kontext_core.config import Params

log = logging.getLogger(__name__)

FINGERPRINT_TAG = "kontext.eval_fingerprint"
AWAITING = "awaiting approval"
ADAPTER_FILES = ("pytorch_lora_weights.safetensors", "lycoris_weights.safetensors")


@dataclass
class Registration:
    model_name: str
    version: str
    model_uri: str
    alias_uri: str | None
    became_champion: bool
    champion_metric: float | None  # the champion's score on this run's eval set (None: no champion)
    metric: str = ""
    challenger_score: float | None = None
    champion_version: str | None = None
    champion_rescored: bool = False
    decision: str = ""
    reason: str = ""
    eval_fingerprint: str = ""
    # registry.require_approval: the challenger won, and the alias moves only when a person approves.
    awaiting_approval: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def greater_is_better(params: Params) -> bool:
    return params.registry.higher_is_better


def beats(new: float, old: float | None, greater_is_better: bool) -> bool:
    """Strictly better: a tie keeps the champion."""
    if old is None:
        return True
    return new > old if greater_is_better else new < old


def adapter_format(adapter_dir: Path) -> str:
    from kontext_core.model.adapter_kinds import detect

    return detect(adapter_dir)[0].format


def champion_version(client: mlflow.MlflowClient, params: Params) -> Any | None:
    try:
        return client.get_model_version_by_alias(params.registry.model_name, params.registry.champion_alias)
    except MlflowException:
        return None


def download_adapter(model_uri: str, dest: Path) -> Path:
    """The adapter folder inside a registered version's files (any layout this project has logged)."""
    import os

    # MLflow's per-file progress bar would land in the command's own output (a verdict, an edit).
    saved = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved
    for name in ADAPTER_FILES:
        found = sorted(root.rglob(name))
        if found:
            return found[0].parent
    raise FileNotFoundError(f"{model_uri}: no adapter file ({', '.join(ADAPTER_FILES)}) in the registered files")


def champion_score(
    client: mlflow.MlflowClient,
    params: Params,
    version: Any,
    fingerprint: str,
    rescore: Callable[[Path], dict[str, float]],
) -> tuple[float | None, bool]:
    """(the champion's score on this eval set, whether it had to be re-scored now)."""
    name, metric = params.registry.model_name, params.registry.metric
    stored = version.tags.get(f"val/{metric}")
    if stored is not None and version.tags.get(FINGERPRINT_TAG) == fingerprint:
        return float(stored), False
    with tempfile.TemporaryDirectory(prefix="kontext-champion-") as tmp:
        adapter = download_adapter(f"models:/{name}/{version.version}", Path(tmp))
        log.info("re-scoring @%s (version %s) on this run's eval set", params.registry.champion_alias, version.version)
        scores = rescore(adapter)
    value = float(scores[metric])
    # The champion now carries the score of the current exam, so the next run can reuse it.
    client.set_model_version_tag(name, version.version, f"val/{metric}", repr(value))
    client.set_model_version_tag(name, version.version, FINGERPRINT_TAG, fingerprint)
    return value, True


def decide(params: Params, challenger: float, champion: float | None, champion_ver: str | None) -> tuple[bool, str]:
    metric, alias = params.registry.metric, params.registry.champion_alias
    direction = "higher" if greater_is_better(params) else "lower"
    if champion is None:
        return True, f"no @{alias} yet: the first version becomes @{alias} ({metric} {challenger:.6g})"
    if beats(challenger, champion, greater_is_better(params)):
        return True, (
            f"{metric} {challenger:.6g} beats @{alias} (version {champion_ver}) {champion:.6g} ({direction} is better)"
        )
    verdict = "ties" if challenger == champion else "does not beat"
    return False, (
        f"{metric} {challenger:.6g} {verdict} @{alias} (version {champion_ver}) {champion:.6g} "
        f"({direction} is better): @{alias} kept"
    )


def register_adapter(
    params: Params,
    run_id: str,
    adapter_dir: Path,
    log_model: Callable[[], Any],
    metrics: dict[str, float],
    fingerprint: str,
    rescore: Callable[[Path], dict[str, float]],
) -> Registration:
    """Register the logged model (`log_model` returns mlflow's ModelInfo), then decide the alias."""
    client = mlflow.MlflowClient()
    name, alias, metric = params.registry.model_name, params.registry.champion_alias, params.registry.metric
    current = champion_version(client, params)
    champion, rescored = (None, False)
    if current is not None:
        champion, rescored = champion_score(client, params, current, fingerprint, rescore)
    info = log_model()
    version = str(info.registered_model_version)
    challenger = float(metrics[metric])
    became, reason = decide(params, challenger, champion, str(current.version) if current else None)
    awaiting = became and params.registry.require_approval
    if awaiting:
        became = False
        log.info("version %s of %s awaits approval before it becomes @%s: %s", version, name, alias, reason)
    elif became:
        client.set_registered_model_alias(name, alias, version)
        log.info("version %s of %s is now @%s: %s", version, name, alias, reason)
    else:
        log.warning("version %s of %s kept out: %s", version, name, reason)
    registration = Registration(
        model_name=name,
        version=version,
        model_uri=f"models:/{name}/{version}",
        alias_uri=f"models:/{name}@{alias}" if became else None,
        became_champion=became,
        champion_metric=champion,
        metric=metric,
        challenger_score=challenger,
        champion_version=str(current.version) if current else None,
        champion_rescored=rescored,
        decision=AWAITING if awaiting else "promoted" if became else "kept champion",
        reason=reason,
        eval_fingerprint=fingerprint,
        awaiting_approval=awaiting,
    )
    record_decision(client, run_id, registration, adapter_format(Path(adapter_dir)), metrics)
    return registration


def record_decision(
    client: mlflow.MlflowClient, run_id: str, reg: Registration, fmt: str, metrics: dict[str, float]
) -> None:
    tags = {
        f"val/{reg.metric}": repr(reg.challenger_score),
        FINGERPRINT_TAG: reg.eval_fingerprint,
        "kontext.decision": reg.decision,
        "kontext.decision_reason": reg.reason,
        "kontext.champion_version": reg.champion_version or "",
        "kontext.champion_score": "" if reg.champion_metric is None else repr(reg.champion_metric),
        "kontext.champion_rescored": str(reg.champion_rescored).lower(),
        "run_id": run_id,
        # mlflow's pyfunc loads both kinds; the tag tells other tools which file to look for.
        "kontext.adapter_format": fmt,
    }
    for metric_name in ("eval_loss", "eval_loss_base", "psnr", "ssim"):
        if metric_name in metrics and metric_name != reg.metric:
            tags[f"val/{metric_name}"] = repr(float(metrics[metric_name]))
    for key, value in tags.items():
        client.set_model_version_tag(reg.model_name, reg.version, key, value)
    champion = (
        "none before it"
        if reg.champion_version is None
        else f"version {reg.champion_version} scored {reg.champion_metric:.6g}"
        + (" (re-scored in this run: its stored score came from another eval set)" if reg.champion_rescored else "")
    )
    client.update_model_version(
        reg.model_name,
        reg.version,
        description=(
            f"Decision: {reg.decision}. {reg.reason}.\n\n"
            f"Challenger (this version): {reg.metric} {reg.challenger_score:.6g}; champion: {champion}.\n\n"
            f"Eval set fingerprint: {reg.eval_fingerprint}. Run: {run_id}."
        ),
    )
    registered = client.get_registered_model(reg.model_name)
    if not registered.description:
        client.update_registered_model(
            reg.model_name,
            description=(
                "FLUX.1 Kontext LoRA adapters (kontext-pipeline). Each version is an MLflow pyfunc: an image "
                "(base64) and a prompt in, the edited image out. @champion is the best version by the registry "
                "metric, re-scored on the current eval set whenever that changes."
            ),
        )
    client.set_tag(run_id, "kontext.registry.version", reg.version)
    client.set_tag(run_id, "kontext.registry.decision", reg.decision)
    client.set_tag(run_id, "kontext.registry.reason", reg.reason)
    if reg.champion_metric is not None:
        client.log_metric(run_id, f"registry/champion_{reg.metric}", reg.champion_metric)
    client.log_metric(run_id, f"registry/challenger_{reg.metric}", float(reg.challenger_score or 0.0))


def record_approval(
    params: Params, version: str, approved: bool, note: str = "", by: str = "", run_id: str | None = None
) -> dict[str, Any]:
    """A person's answer on a version that awaits approval: approve moves the alias, reject leaves it.

    Both are recorded on the version (tags `kontext.approval*`, the decision, the description) and on
    the run. Returns the registration fields that changed.
    """
    client = mlflow.MlflowClient()
    name, alias = params.registry.model_name, params.registry.champion_alias
    decision = "promoted (approved)" if approved else "kept champion (rejected)"
    if approved:
        client.set_registered_model_alias(name, alias, version)
        log.info("version %s of %s approved%s: now @%s", version, name, f" by {by}" if by else "", alias)
    else:
        log.warning("version %s of %s rejected%s: @%s unchanged", version, name, f" by {by}" if by else "", alias)
    tags = {
        "kontext.approval": "approved" if approved else "rejected",
        "kontext.approval_note": note,
        "kontext.approval_by": by,
        "kontext.decision": decision,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    current = client.get_model_version(name, version)
    answer = f"Approval: {tags['kontext.approval']}" + (f" by {by}" if by else "") + (f": {note}" if note else "") + "."
    client.update_model_version(name, version, description=f"{current.description or ''}\n\n{answer}".strip())
    if run_id:
        client.set_tag(run_id, "kontext.registry.decision", decision)
        client.set_tag(run_id, "kontext.registry.approval", tags["kontext.approval"])
    return {
        "decision": decision,
        "became_champion": approved,
        "alias_uri": f"models:/{name}@{alias}" if approved else None,
        "awaiting_approval": False,
        "approval": tags["kontext.approval"],
        "approval_note": note,
    }
