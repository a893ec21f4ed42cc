"""Run overrides: the settings a user changes between runs, layered over `params.yaml`.

A run started from the Prefect UI (or `kontext run --set key=value`) names a few of these; every
other key keeps the file's value. The layered mapping goes through the same reader as the file
(`params_from_dict`), so an override means exactly what the same edit to `params.yaml` would mean:
the same checks, the same cross-key rules, the same stage fingerprints. Nothing here knows about
Prefect; the flow's signature takes its field types and descriptions from `RunOverrides`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from kontext_core.config.base import ConfigError, Strict, suggest
from kontext_core.config.load import params_from_dict
from kontext_core.config.params import LrScheduler, Optimizer, Params, Precision

WHERE = "run override"


class RunOverrides(Strict):
    """Per-run settings; `None` keeps the value of the params file. Frozen: a run's settings do not change."""

    model_config = ConfigDict(frozen=True)

    learning_rate: float | None = Field(
        None, gt=0, description="Optimizer learning rate (params.yaml: learning_rate), e.g. 1e-4."
    )
    max_train_steps: int | None = Field(
        None, ge=1, description="Optimizer steps to train for (max_train_steps); wins over num_train_epochs."
    )
    num_train_epochs: int | None = Field(
        None,
        ge=1,
        description="Epochs to train for (num_train_epochs); set alone, it clears max_train_steps so the epochs count.",
    )
    lora_rank: int | None = Field(None, ge=1, description="LoRA rank (lora_rank); 16 on the real model.")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (lora_alpha); usually equal to the rank.")
    lora_type: str | None = Field(
        None, min_length=1, description="Adapter kind (lora_type): standard (peft LoRA) or lycoris (lycoris_config)."
    )
    base_model_precision: Precision | None = Field(
        None, description="Quantization of the frozen base transformer (base_model_precision)."
    )
    optimizer: Optimizer | None = Field(None, description="Optimizer (optimizer).")
    lr_scheduler: LrScheduler | None = Field(None, description="Learning-rate schedule (lr_scheduler).")
    seed: int | None = Field(None, ge=0, description="Seed of the pairing split, noise and training (seed).")
    validation_guidance: float | None = Field(
        None, ge=0, description="Guidance scale of the validation edits (validation_guidance); 2.5 for Kontext-dev."
    )
    validation_num_inference_steps: int | None = Field(
        None, ge=1, description="Denoising steps of the validation edits (validation_num_inference_steps)."
    )
    validation_resolution: str | None = Field(
        None, description="WIDTHxHEIGHT of the validation edits (validation_resolution), multiples of 16."
    )
    validation_prompt: str | None = Field(
        None,
        min_length=1,
        description="An instruction rendered on the eval references at each validation during training "
        "(validation_prompt; needs validation_step_interval).",
    )
    data_backend_config: str | None = Field(
        None,
        min_length=1,
        description="The dataset file (data_backend_config), relative to the project.",
    )
    pretrained_model_name_or_path: str | None = Field(
        None,
        min_length=1,
        description="The base model (pretrained_model_name_or_path): a hub id or a local diffusers folder.",
    )


OVERRIDE_KEYS = tuple(RunOverrides.model_fields)


def check_overrides(values: dict[str, Any], model: type[RunOverrides] = RunOverrides) -> RunOverrides:
    """The overrides that are set, validated (as `model`: RunOverrides or the flow form's subclass of
    it); every problem as one line naming the key."""
    given = {key: value for key, value in values.items() if value is not None}
    problems = []
    for key in given:
        if key not in RunOverrides.model_fields:
            hint = suggest(key, list(OVERRIDE_KEYS))
            problems.append(
                f"{WHERE} {key!r}: not a run setting"
                + (f"; {hint}" if hint else "")
                + f"; allowed: {', '.join(OVERRIDE_KEYS)} (other keys: edit the params file)"
            )
    if problems:
        raise ConfigError(problems)
    try:
        return model(**given)
    except ValidationError as exc:
        raise ConfigError(
            [
                f"{WHERE} {'.'.join(str(p) for p in err['loc'])} = {err.get('input')!r}: {err['msg']}"
                for err in exc.errors()
            ]
        ) from None


def layer(raw: dict[str, Any], overrides: RunOverrides) -> dict[str, Any]:
    """The params file's mapping with the overrides put in (the file's other keys untouched)."""
    used = overrides.model_dump(exclude_none=True)
    data = dict(raw)
    data.update(used)
    if "num_train_epochs" in used and "max_train_steps" not in used:
        data["max_train_steps"] = None
    return data


def layered_params(
    raw: dict[str, Any], values: dict[str, Any] | RunOverrides, where: str = "params"
) -> tuple[Params, dict[str, Any]]:
    """Params with the overrides layered over the file's mapping, and the overrides actually used.

    `values` is a mapping to check, or settings already checked (a RunOverrides: not validated again).
    Raises ConfigError (one line per problem) for a bad override or a combination the params rules refuse.
    """
    overrides = values if isinstance(values, RunOverrides) else check_overrides(values)
    used = overrides.model_dump(exclude_none=True)
    label = f"{where} (with {WHERE}s {', '.join(f'{k}={v}' for k, v in used.items())})" if used else where
    return params_from_dict(layer(raw, overrides), where=label), used


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (the CLI's `--set`) as a mapping; values are read as YAML scalars."""
    from kontext_core.config.params_file import AliasBudgetError, ParamsFileError, parse_params_text

    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{WHERE} {item!r}: expected KEY=VALUE, e.g. learning_rate=0.0005")
        try:
            values[key.strip()] = parse_params_text(f"v: {text}")["v"] if text.strip() else None
        except AliasBudgetError as exc:
            raise ConfigError(f"{WHERE} {key.strip()}: {exc}") from None
        except (ParamsFileError, TypeError, KeyError):
            values[key.strip()] = text
    return values
