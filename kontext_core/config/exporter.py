"""`kontext config export-simpletuner`: this project's config as SimpleTuner's config.json + multidatabackend.json.

The way back from `import-simpletuner`. Keys acted on here are written under SimpleTuner's names with
SimpleTuner's spellings (`loss_type: mse` -> `l2`); this pipeline's `null`-means-off values are
written the way SimpleTuner says off (`num_train_epochs: 0`, `checkpoint_step_interval: 0`, ...);
pipeline sections become SimpleTuner's keys where it has one (`mlflow.experiment_name` ->
`tracker_project_name`). What SimpleTuner cannot express is listed in the returned notes, never
silently dropped. Secrets (aws keys) are never written: SimpleTuner then reads the AWS chain too.
"""

from __future__ import annotations

from typing import Any

from kontext_core.config.datasets import DatasetConfig, DatasetEntry
from kontext_core.config.params import Params
from kontext_core.config.simpletuner import acted_keys
from kontext_core.config.simpletuner_keys import SECRET_DATASET_KEYS

# This pipeline's null (off/unset) -> SimpleTuner's way of saying it; keys absent here are left out when null.
NULL_AS: dict[str, Any] = {
    "max_train_steps": 0,
    "num_train_epochs": 0,
    "checkpoint_step_interval": 0,
    "validation_step_interval": 0,
    "max_grad_norm": 0,
    "resume_from_checkpoint": "",
}
# Values spelt differently in SimpleTuner.
SPELLING: dict[str, dict[Any, Any]] = {
    "loss_type": {"mse": "l2"},
    "optimizer": {"adamw": "torch-adamw"},
    "caption_strategy": {"instanceprompt": "instance_prompt"},
}
SECRET_KEYS = set(SECRET_DATASET_KEYS)


def _config_json(params: Params, data_backend_config: str) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {}
    notes: list[str] = []
    for key in acted_keys():
        value = getattr(params, key)
        if key == "data_backend_config":
            value = data_backend_config
        if value is None:
            if key in NULL_AS:
                out[key] = NULL_AS[key]
            elif key == "validation_resolution":
                notes.append("validation_resolution: null (each eval pair at its own bucket) has no SimpleTuner form")
            continue
        if key == "flux_lora_target" and isinstance(value, list):
            notes.append(f"flux_lora_target: the module list {value} has no SimpleTuner form; 'all' written")
            value = "all"
        out[key] = SPELLING.get(key, {}).get(value, value)
    out["tracker_project_name"] = params.mlflow.experiment_name
    out["hub_model_id"] = params.registry.model_name
    out["push_to_hub"] = False
    out["report_to"] = "none"
    return out, notes


def _generator(spec: dict[str, Any]) -> dict[str, Any]:
    spec = dict(spec)
    if "quality_decay" in spec:
        spec["round_quality_decay"] = spec.pop("quality_decay")
    if spec.get("quality_mode") == "list":
        spec["quality_mode"] = "random"  # SimpleTuner's name for "one of quality_list"
    return spec


def _entry(entry: DatasetEntry, notes: list[str]) -> dict[str, Any]:
    data = entry.model_dump(mode="json", exclude_defaults=True, exclude={"simpletuner_extras", *SECRET_KEYS})
    data["id"] = entry.id
    data.update({k: v for k, v in entry.simpletuner_extras.items() if k not in SECRET_KEYS})
    if entry.dataset_type != "text_embeds" and not entry.disabled:
        if entry.resolution is None:
            notes.append(
                f"dataset '{entry.id}': resolution null (each image at its own size) has no SimpleTuner form; "
                "SimpleTuner's 1024 applies there"
            )
        else:
            data["resolution"] = entry.resolution
        data["resolution_type"] = entry.resolution_type
        data["crop_style"] = entry.crop_style  # explicit: the cut applies with crop off too
    if entry.conditioning:
        data["conditioning"] = [
            _generator(g.model_dump(mode="json", exclude_defaults=True) | {"type": g.type}) for g in entry.conditioning
        ]
    if entry.crop_aspect_buckets:
        data["crop_aspect_buckets"] = [
            {"aspect": b.get("aspect", b.get("aspect_bucket")), "weight": b["weight"]} if isinstance(b, dict) else b
            for b in entry.crop_aspect_buckets
        ]
    return data


def export_simpletuner(
    params: Params, datasets: DatasetConfig, data_backend_config: str
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """(config.json, multidatabackend.json, notes on what SimpleTuner cannot express)."""
    config, notes = _config_json(params, data_backend_config)
    entries = [_entry(entry, notes) for entry in datasets.entries]
    return config, entries, notes
