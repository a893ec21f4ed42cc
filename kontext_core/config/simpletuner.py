"""SimpleTuner's config.json keys at the top level of params.yaml: acted on, mapped or not applicable.

- **acted on**: a `Params` field of the same name and meaning;
- **mapped**: SimpleTuner's key names something this pipeline does another way (`hub_model_id` is the
  MLflow registry's model name, `report_to` is always MLflow); the value moves to its key here or
  has nothing to carry;
- **not applicable**: accepted, no effect here, and listed in one warning per run, unless its value
  is what this pipeline does anyway (`use_ema: false`).

Anything else is an unknown key: every one is reported, with a hint only when one known key is close.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import BaseModel

from kontext_core.config.base import harmless, with_hint
from kontext_core.config.params import Params
from kontext_core.config.simpletuner_keys import SIMPLETUNER_KEYS


class Mapped(NamedTuple):
    target: str | None  # a params.yaml key (dotted for sections), or None: nothing to carry
    note: str


MAPPED: dict[str, Mapped] = {
    "checkpointing_steps": Mapped("checkpoint_step_interval", "SimpleTuner's older name"),
    "save_total_limit": Mapped("checkpoints_total_limit", "SimpleTuner's older name"),
    "validation_steps": Mapped("validation_step_interval", "SimpleTuner's older name"),
    "fused_qkv_projections": Mapped("fuse_qkv_projections", "SimpleTuner's registry name for the option"),
    "hub_model_id": Mapped("registry.model_name", "adapters are published to the MLflow model registry"),
    "tracker_project_name": Mapped("mlflow.experiment_name", "runs are tracked in MLflow"),
    "report_to": Mapped(None, "runs are always tracked in MLflow (section mlflow:)"),
    "push_to_hub": Mapped(None, "every validated adapter is registered in MLflow (section registry:)"),
    "output_dir": Mapped(None, "each stage writes under models/, cache/, data/ and artifacts/ of the project"),
    "logging_dir": Mapped(None, "logs and metrics go to the MLflow run"),
}

# Why a key does nothing here; SimpleTuner keys without an entry get GENERIC_REASON.
REASONS: dict[str, str] = {
    "ema_cpu_only": "the EMA lives beside the adapter, on its device",
    "ema_device": "the EMA lives beside the adapter, on its device",
    "ema_foreach_disable": "the EMA update is a plain loop over the adapter's tensors",
    "ema_validation": "validation always uses the saved (averaged) adapter",
    "validation_prompt_library": "validation renders validation_prompt and user_prompt_library, not a built-in library",
    "eval_steps_interval": "validation during training is validation_step_interval",
    "validation_guidance_rescale": "FluxKontextPipeline has no guidance rescale (Kontext's guidance is distilled)",
    "validation_negative_prompt": "validation uses no negative prompt",
    "validation_disable_unconditional": "validation uses no negative prompt",
    "validation_torch_compile": "validation runs the pipeline uncompiled",
    "evaluation_type": "validation scores PSNR against the eval targets",
    "disable_benchmark": "validate always renders the base model next to the adapter",
    "push_checkpoints_to_hub": "checkpoints stay under models/checkpoints",
    "tracker_run_name": "MLflow names its runs",
    "grad_clip_method": "max_grad_norm clips by the global norm",
    "disable_bucket_pruning": "buckets are never pruned",
    "controlnet": "this pipeline trains Kontext LoRA adapters only",
    "train_text_encoder": "the text encoders stay frozen (their embeddings are cached)",
    "attention_mechanism": "attention is diffusers' default processor",
    "vae_cache_ondemand": "latents are cached by the cache_vae stage before training",
    "compress_disk_cache": "caches are safetensors files",
    "repeats": "a dataset key: set it on the dataset entry (SimpleTuner ignores it here too)",
    "aspect_ratio_bucketing": "a legacy key SimpleTuner ignores too",
    "aspect_ratio_bucket_min": "a legacy key SimpleTuner ignores too",
    "aspect_ratio_bucket_max": "a legacy key SimpleTuner ignores too",
    "vae_cache_preprocess": "latents are cached by the cache_vae stage before training",
    **{
        f"text_encoder_{n}_precision": "the text encoders run once, in cache_text, unquantized (embeddings are cached)"
        for n in range(1, 5)
    },
}
GENERIC_REASON = "SimpleTuner option that this pipeline does not implement"


def pipeline_sections() -> list[str]:
    return [k for k, f in Params.model_fields.items() if isinstance(f.default, BaseModel)]


def acted_keys() -> list[str]:
    sections = pipeline_sections()
    return [k for k in Params.model_fields if k not in sections]


def state_of(key: str) -> str:
    if key in Params.model_fields:
        return "acted on" if key in acted_keys() else "pipeline section"
    if key in MAPPED:
        return "mapped"
    if key in SIMPLETUNER_KEYS:
        return "not applicable"
    return "unknown"


@dataclass
class Translation:
    """params.yaml data from a SimpleTuner-style mapping, and what happened to each key."""

    data: dict[str, Any] = field(default_factory=dict)
    mapped: dict[str, Any] = field(default_factory=dict)  # SimpleTuner key → value
    not_applicable: dict[str, Any] = field(default_factory=dict)  # keys worth a warning → value
    quiet: dict[str, Any] = field(default_factory=dict)  # not applicable, but harmless values
    unknown: list[str] = field(default_factory=list)  # one problem line each


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        section = data.setdefault(head, {})
        if isinstance(section, dict):
            _set_dotted(section, rest, value)
        return
    data.setdefault(head, value)  # a key given under its own name wins over its SimpleTuner alias


def translate(raw: dict[str, Any], where: str) -> Translation:
    """Strip `--` prefixes, move mapped keys, set aside not-applicable ones, list unknown ones."""
    out = Translation()
    known = list(Params.model_fields) + list(MAPPED) + sorted(SIMPLETUNER_KEYS)
    pending: list[tuple[str, Any]] = []
    for raw_key, value in raw.items():
        key = str(raw_key).lstrip("-") if str(raw_key).startswith("--") else str(raw_key)
        if key in Params.model_fields:
            out.data[key] = value
        elif key in MAPPED:
            out.mapped[key] = value
            if MAPPED[key].target is not None and value is not None:
                pending.append((MAPPED[key].target, value))
        elif key in SIMPLETUNER_KEYS:
            (out.quiet if harmless(key, value) else out.not_applicable)[key] = value
        else:
            out.unknown.append(with_hint(f"{where}: unknown key '{raw_key}'", key, known))
    for target, value in pending:
        _set_dotted(out.data, target, value)
    return out


def not_applicable_warning(where: str, keys: dict[str, str]) -> str:
    """The one warning line: every not-applicable key set to a value that would matter, with why."""
    listed = "; ".join(f"{key} ({why})" for key, why in keys.items())
    return f"{where}: accepted but not applicable here, no effect: {listed}"


def reason(key: str) -> str:
    return REASONS.get(key, GENERIC_REASON)
