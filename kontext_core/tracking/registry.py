"""The MLflow model registry: log the adapter as a pyfunc edit model, register it, decide the alias.

Registration is one recoverable transaction (`register_adapter`): one version per adapter hash, its
tags and description set in the call that creates it, a half-made version removed on the next run,
the alias moved last (`move_alias`). The decision is fair: the challenger and the champion are scored
on the same eval set with the same settings. The champion's score is reused only when it was
measured on the same exam (its `kontext.eval_fingerprint` tag equals this run's); otherwise the
champion is re-scored now. A tie or a loss keeps the champion. The decision, both scores and the
fingerprint go on the new version (tags and description), on the champion's re-scored tags, and on
the run.
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
from kontext_core.config.registered import metric_directions
from kontext_core.lifecycle import kill_point
from kontext_core.tracking.artifact_check import ADAPTER_HASH_TAG
from kontext_core.tracking.lineage import BASE_MODEL_TAG

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
    # The base model the adapter was trained on, as the run's lineage tag names it (a hub id's commit).
    base_model: str = ""

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
    return _adapter_in(root, model_uri)


def _adapter_in(root: Path, model_uri: str) -> Path:
    for name in ADAPTER_FILES:
        found = sorted(root.rglob(name))
        if found:
            from kontext_core.tracking.artifact_check import check_registered

            check_registered(model_uri, found[0].parent)  # never load a registered file unchecked
            return found[0].parent
    raise FileNotFoundError(f"{model_uri}: no adapter file ({', '.join(ADAPTER_FILES)}) in the registered files")


def download_version(model_uri: str, dest: Path) -> tuple[Path, Path | None]:
    """(the adapter folder, the model card folder or None) of a registered version's files."""
    adapter = download_adapter(model_uri, dest)
    cards = sorted(Path(dest).rglob("model_card/README.md"))
    return adapter, (cards[0].parent if cards else None)


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


# Set in the call that creates a version, with every other tag: a version that has it is complete.
DECISION_TAG = "kontext.decision"


def adapter_hash_tags(adapter_dir: Path, digest: str) -> dict[str, str]:
    """The hashes a load checks the registered files against (kontext_core.tracking.artifact_check)."""
    import json

    from kontext_core.tracking.artifact_check import ADAPTER_FILES_TAG, file_hashes

    return {ADAPTER_HASH_TAG: digest, ADAPTER_FILES_TAG: json.dumps(file_hashes(adapter_dir), sort_keys=True)}


def adapter_hash(adapter_dir: Path) -> str:
    from kontext_core.fsutil import sha256_tree

    return sha256_tree(Path(adapter_dir))


def versions_of_adapter(client: mlflow.MlflowClient, name: str, digest: str) -> list[Any]:
    """The registered versions of `name` made from this adapter, oldest first."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    found = [v for v in versions if (v.tags or {}).get(ADAPTER_HASH_TAG) == digest]
    return sorted(found, key=lambda v: int(v.version))


def _complete(version: Any) -> bool:
    return str(getattr(version, "status", "READY")) in ("READY", "ModelVersionStatus.READY") and bool(
        (version.tags or {}).get(DECISION_TAG)
    )


def _registration_of(params: Params, version: Any) -> Registration:
    """A Registration rebuilt from a complete version's tags (a rerun reuses it, nothing is re-logged)."""
    tags = version.tags or {}
    name, alias, metric = params.registry.model_name, params.registry.champion_alias, params.registry.metric

    def number(key: str) -> float | None:
        return float(tags[key]) if tags.get(key) not in (None, "") else None

    became = tags.get(DECISION_TAG) == "promoted"
    return Registration(
        model_name=name,
        version=str(version.version),
        model_uri=f"models:/{name}/{version.version}",
        alias_uri=f"models:/{name}@{alias}" if became else None,
        became_champion=became,
        champion_metric=number("kontext.champion_score"),
        metric=metric,
        challenger_score=number(f"val/{metric}"),
        champion_version=tags.get("kontext.champion_version") or None,
        champion_rescored=tags.get("kontext.champion_rescored") == "true",
        decision=tags.get(DECISION_TAG, ""),
        reason=tags.get("kontext.decision_reason", ""),
        eval_fingerprint=tags.get(FINGERPRINT_TAG, ""),
        awaiting_approval=tags.get(DECISION_TAG) == AWAITING,
    )


def move_alias(client: mlflow.MlflowClient, params: Params, registration: Registration) -> bool:
    """Point the champion alias at a promoted version: the last step of a registration, and its own
    function so that a step in between (an approval) can call it later. Idempotent; a version
    promoted against a champion that has changed since (another version took the alias meanwhile)
    does not move it back. Returns whether the alias points at the version now."""
    if not registration.became_champion:
        return False
    name, alias = params.registry.model_name, params.registry.champion_alias
    current = champion_version(client, params)
    if current is not None and str(current.version) == registration.version:
        return True
    if current is not None and str(current.version) != (registration.champion_version or ""):
        log.warning(
            "version %s was promoted over version %s, but @%s is now version %s: alias left as it is",
            registration.version,
            registration.champion_version,
            alias,
            current.version,
        )
        return False
    client.set_registered_model_alias(name, alias, registration.version)
    log.info("version %s of %s is now @%s: %s", registration.version, name, alias, registration.reason)
    return True


def register_adapter(
    params: Params,
    run_id: str,
    adapter_dir: Path,
    log_model: Callable[[], Any],
    metrics: dict[str, float],
    fingerprint: str,
    rescore: Callable[[Path], dict[str, float]],
    alias_now: bool = True,
) -> Registration:
    """Register the adapter as one recoverable transaction, then move the alias (last).

    1. A version already made from this adapter (tag `kontext.adapter_sha256`) is reused when complete
       (judged on another eval set, it is judged again: new scores and decision, no second version);
       a half-made one (not READY, or without the decision tags a kill left out) is deleted first.
    2. Otherwise the champion is scored, the decision taken, the model logged to the run
       (`log_model` returns mlflow's ModelInfo) and the version created with every tag and the
       description in that one call; should another machine have registered the same adapter at the
       same time, the oldest version is kept and this one deleted.
    3. The alias moves (`move_alias`) unless `alias_now` is False.
    """
    client = mlflow.MlflowClient()
    name, metric = params.registry.model_name, params.registry.metric
    digest = adapter_hash(Path(adapter_dir))
    fmt = adapter_format(Path(adapter_dir))
    reusable = []
    for version in versions_of_adapter(client, name, digest):
        if _complete(version):
            reusable.append(version)
        else:
            log.warning("version %s of %s was left half-registered (interrupted): deleted", version.version, name)
            client.delete_model_version(name, version.version)
    if reusable and (reusable[0].tags or {}).get(FINGERPRINT_TAG) == fingerprint:
        registration = _registration_of(params, reusable[0])
        log.info("version %s of %s already holds this adapter: reused", registration.version, name)
    else:
        current = champion_version(client, params)
        champion, rescored = (None, False)
        if current is not None:
            champion, rescored = champion_score(client, params, current, fingerprint, rescore)
        challenger = float(metrics[metric])
        became, reason = decide(params, challenger, champion, str(current.version) if current else None)
        # registry.require_approval: a promotion waits for a person's answer (flows/approval.py).
        awaiting = became and params.registry.require_approval
        if awaiting:
            became = False
            alias = params.registry.champion_alias
            log.info("the new version awaits approval before it becomes @%s: %s", alias, reason)
        registration = Registration(
            model_name=name,
            version="",
            model_uri="",
            alias_uri=f"models:/{name}@{params.registry.champion_alias}" if became else None,
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
            base_model=client.get_run(run_id).data.tags.get(BASE_MODEL_TAG, ""),
        )
        if reusable:
            # The same adapter judged on another exam: its version takes the new scores and decision,
            # the exam's fingerprint last (an interrupted update is redone), and no second version.
            registration.version = str(reusable[0].version)
            tags = version_tags(registration, run_id, fmt, metrics)
            for key, value in [
                *((k, v) for k, v in tags.items() if k != FINGERPRINT_TAG),
                (FINGERPRINT_TAG, fingerprint),
            ]:
                client.set_model_version_tag(name, registration.version, key, value)
            client.update_model_version(
                name, registration.version, description=version_description(registration, run_id)
            )
            log.info(
                "version %s of %s already holds this adapter: re-judged on this eval set", registration.version, name
            )
        else:
            registration.version = _create_version(
                client, params, run_id, registration, log_model, fmt, metrics, digest, Path(adapter_dir)
            )
        if not registration.became_champion and not registration.awaiting_approval:
            log.warning("version %s of %s kept out: %s", registration.version, name, registration.reason)
    registration.model_uri = f"models:/{name}/{registration.version}"
    kill_point("register", "version_created")
    record_decision(client, run_id, registration, fmt, metrics)
    if alias_now:
        move_alias(client, params, registration)
    return registration


def _create_version(
    client: mlflow.MlflowClient,
    params: Params,
    run_id: str,
    registration: Registration,
    log_model: Callable[[], Any],
    fmt: str,
    metrics: dict[str, float],
    digest: str,
    adapter_dir: Path,
) -> str:
    """Log the model and create its version, every tag and the description in the create call; if
    another machine registered the same adapter meanwhile, keep the oldest version and drop this one."""
    name = params.registry.model_name
    info = log_model()
    _ensure_registered_model(client, name)
    created = client.create_model_version(
        name,
        source=info.model_uri,
        run_id=run_id,
        tags=version_tags(registration, run_id, fmt, metrics) | adapter_hash_tags(adapter_dir, digest),
        description=version_description(registration, run_id),
        await_creation_for=60,
        model_id=getattr(info, "model_id", None),
    )
    oldest = versions_of_adapter(client, name, digest)
    if oldest and str(oldest[0].version) != str(created.version):
        client.delete_model_version(name, created.version)
        log.warning("version %s of %s was registered from the same adapter meanwhile: kept", oldest[0].version, name)
        return str(oldest[0].version)
    return str(created.version)


def _ensure_registered_model(client: mlflow.MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name)
        except MlflowException:  # created meanwhile by another process
            client.get_registered_model(name)


def version_tags(reg: Registration, run_id: str, fmt: str, metrics: dict[str, float]) -> dict[str, str]:
    """Every tag of a new version (set in the call that creates it)."""
    tags = {
        f"val/{reg.metric}": repr(reg.challenger_score),
        FINGERPRINT_TAG: reg.eval_fingerprint,
        DECISION_TAG: reg.decision,
        "kontext.decision_reason": reg.reason,
        "kontext.champion_version": reg.champion_version or "",
        "kontext.champion_score": "" if reg.champion_metric is None else repr(reg.champion_metric),
        "kontext.champion_rescored": str(reg.champion_rescored).lower(),
        "run_id": run_id,
        # mlflow's pyfunc loads both kinds; the tag tells other tools which file to look for.
        "kontext.adapter_format": fmt,
    }
    if reg.base_model:
        tags[BASE_MODEL_TAG] = reg.base_model
    for metric_name in (*metric_directions(), "eval_loss_base"):
        if metric_name in metrics and metric_name != reg.metric:
            tags[f"val/{metric_name}"] = repr(float(metrics[metric_name]))
    return tags


def version_description(reg: Registration, run_id: str) -> str:
    champion = (
        "none before it"
        if reg.champion_version is None
        else f"version {reg.champion_version} scored {reg.champion_metric:.6g}"
        + (" (re-scored in this run: its stored score came from another eval set)" if reg.champion_rescored else "")
    )
    return (
        f"Decision: {reg.decision}. {reg.reason}.\n\n"
        f"Challenger (this version): {reg.metric} {reg.challenger_score:.6g}; champion: {champion}.\n\n"
        f"Eval set fingerprint: {reg.eval_fingerprint}. Run: {run_id}."
    )


def record_decision(
    client: mlflow.MlflowClient, run_id: str, reg: Registration, fmt: str, metrics: dict[str, float]
) -> None:
    """The decision on the run (the version carries it from its creation) and the model's description."""
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
