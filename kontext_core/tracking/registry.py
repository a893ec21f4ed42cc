"""The MLflow model registry: log the adapter (mlflow.diffusers flavour), register, move the alias."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from kontext_core.config import Params

log = logging.getLogger(__name__)


@dataclass
class Registration:
    model_name: str
    version: str
    model_uri: str
    alias_uri: str | None
    became_champion: bool
    champion_metric: float | None


def champion_metric(client: mlflow.MlflowClient, params: Params) -> tuple[str | None, float | None]:
    name, alias, metric = params.registry.model_name, params.registry.champion_alias, params.registry.metric
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    # The score is kept on the version itself: the run it was logged to may hold no validation.
    value = version.tags.get(f"val/{metric}")
    return version.version, float(value) if value is not None else None


def beats(new: float, old: float | None, greater_is_better: bool) -> bool:
    if old is None:
        return True
    return new > old if greater_is_better else new < old


def adapter_format(adapter_dir: Path) -> str:
    from kontext_core.model.adapter_kinds import detect

    return detect(adapter_dir)[0].format


def register_adapter(
    params: Params, run_id: str, adapter_dir: Path, base_model: str, metric_value: float
) -> Registration:
    client = mlflow.MlflowClient()
    name = params.registry.model_name
    with mlflow.start_run(run_id=run_id):
        info = mlflow.diffusers.log_model(
            adapter_path=str(adapter_dir),
            base_model=base_model,
            name="adapter",
            registered_model_name=name,
            await_registration_for=60,
        )
    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, f"val/{params.registry.metric}", repr(float(metric_value)))
    old_version, old_metric = champion_metric(client, params)
    became = beats(metric_value, old_metric, params.registry.greater_is_better)
    if became:
        client.set_registered_model_alias(name, params.registry.champion_alias, version)
        log.info("version %s of %s is now @%s", version, name, params.registry.champion_alias)
    else:
        log.info("version %s did not beat @%s (version %s)", version, params.registry.champion_alias, old_version)
    client.set_model_version_tag(name, version, "run_id", run_id)
    # mlflow's flavour only knows "lora"; LyCORIS files need `kontext edit` (lycoris-lora) to load.
    client.set_model_version_tag(name, version, "kontext.adapter_format", adapter_format(Path(adapter_dir)))
    return Registration(
        model_name=name,
        version=version,
        model_uri=f"models:/{name}/{version}",
        alias_uri=f"models:/{name}@{params.registry.champion_alias}" if became else None,
        became_champion=became,
        champion_metric=old_metric,
    )
