"""Where this pipeline's defaults and accepted values differ from SimpleTuner's, on purpose, and why.

SimpleTuner's own defaults and choices are derived from its source into
config/simpletuner/defaults@<commit>.json (bench/derive_simpletuner_table.py);
tests/unit/test_simpletuner_defaults.py compares every key acted on here with that table, so a
difference is either listed below with its reason or a test failure. `kontext config check` prints the
differences that apply to a file (the keys it leaves out) in one note, and refuses SimpleTuner's
values that this pipeline does not do in one line with the reason.
"""

from __future__ import annotations

from typing import Any, NamedTuple

SIMPLETUNER_COMMIT = "bc8e6ab7738ce457a2ed8eb2d26cadd91c6442cb"


class Difference(NamedTuple):
    simpletuner: Any  # SimpleTuner's default, as in the derived table
    reason: str


# SimpleTuner's spelling -> this pipeline's, for values that mean the same.
SAME_MEANING: dict[str, dict[Any, Any]] = {
    "loss_type": {"l2": "mse"},
    "optimizer": {"torch-adamw": "adamw"},
    "caption_strategy": {"instance_prompt": "instanceprompt"},
}

DIFFERENCES: dict[str, Difference] = {
    "model_flavour": Difference(
        None, "this pipeline trains FLUX.1 Kontext only; a file that names model_family but no flavour is warned about"
    ),
    "model_type": Difference("full", "this pipeline trains adapters (LoRA, LyCORIS), never the full transformer"),
    "base_model_precision": Difference(
        "no_change",
        "FLUX.1 Kontext in bf16 does not fit a 24 GB GPU for training; int8-quanto does (the quick-start's value)",
    ),
    "quantize_via": Difference("accelerator", "quantizing on the CPU works on every machine this pipeline runs on"),
    "gradient_checkpointing": Difference(
        True, "the embedded tiny model needs no activation memory savings; set true on the real model"
    ),
    "lora_dropout": Difference(
        0.1, "diffusers' Kontext LoRA script and the quick-start's recipes train without adapter dropout"
    ),
    "learning_rate": Difference(4e-07, "SimpleTuner's default is for full fine-tunes; an adapter at 4e-7 barely moves"),
    "optimizer": Difference("adamw_bf16", "adamw_bf16 needs bf16 weights; plain AdamW also runs in float32 on a CPU"),
    "max_train_steps": Difference(None, "a fixed step budget keeps runs bounded and comparable"),
    "num_train_epochs": Difference(
        1, "unset: max_train_steps decides the length (SimpleTuner's configs write 0 for this)"
    ),
    "train_batch_size": Difference(4, "one Kontext pair at 1 MP already fills a 24 GB GPU"),
    "seed": Difference(None, "same params, same bytes: every run is seeded"),
    "caption_dropout_probability": Difference(0.1, "a Kontext edit learns from its instruction; dropping it is opt-in"),
    "mixed_precision": Difference("bf16", "bf16 applies on accelerators; a CPU run stays float32 either way"),
    "checkpoint_step_interval": Difference(
        500, "each stage's outputs are its resume point; checkpoints inside training are opt-in"
    ),
    "checkpoints_total_limit": Difference(5, "no checkpoints by default, so nothing to limit"),
    "resume_from_checkpoint": Difference("latest", "a new run starts fresh unless told to resume"),
    "validation_guidance": Difference(7.5, "FLUX.1 Kontext [dev] validates at guidance 2.5 (the quick-start's value)"),
    "validation_resolution": Difference(
        "256", "null renders each eval pair at its own bucket, so the score compares like with like"
    ),
    "validation_seed": Difference(None, "same params, same bytes: validation is seeded"),
    "validation_step_interval": Difference(
        100, "the validate stage scores every eval pair after training; validation during it is opt-in"
    ),
    "data_backend_config": Difference(None, "the project's dataset file has one fixed place"),
    "resolution": Difference(1024, "an entry without resolution keeps the image's own size on the 64 px grid"),
    "loss_type": Difference("l2", "the same loss: SimpleTuner's 'l2' is stored as 'mse' (both spellings accepted)"),
}

# SimpleTuner's accepted values that this pipeline refuses, with the reason (one line at config check).
REFUSED_VALUES: dict[str, dict[Any, str]] = {
    "model_type": {"full": "this pipeline trains adapters only (lora)"},
    "quantize_via": {"pipeline": "quantization is its own stage here (cpu or accelerator)"},
    "lora_init_type": {"loftq": "LoftQ initialisation needs the base weights unquantized and a bitsandbytes setup"},
    "mixed_precision": {"fp8": "FLUX training in fp8 autocast is not supported here; use bf16 with fp8-quanto weights"},
    "caption_strategy": {
        "parquet": "captions come from text files, file names, the instance prompt or a huggingface column"
    },
}


# SimpleTuner choices beyond the ones implemented here, refused by the key's own "allowed:" line.
UNSUPPORTED_CHOICES: dict[str, str] = {
    "optimizer": "SimpleTuner's other optimizers (bitsandbytes, torchao, prodigy, ...) are not implemented here",
    "flux_lora_target": "presets other than all, all+ffs, context, context+ffs are not implemented; a module list is",
}


def refused_value_problem(key: str, value: Any, allowed: str) -> str | None:
    """The one-line refusal of a SimpleTuner value this pipeline does not do (None when accepted)."""
    reason = REFUSED_VALUES.get(key, {}).get(value) if isinstance(value, str | int | float) else None
    if reason is None:
        return None
    return f"{key} = {value!r}: {reason}; allowed: {allowed}"


def differences_note(where: str, keys_given: set[str]) -> str | None:
    """One note naming each deliberate default difference that applies to a file (keys it leaves out)."""
    applying = [(key, diff) for key, diff in DIFFERENCES.items() if key not in keys_given and key not in SAME_MEANING]
    if not applying:
        return None
    listed = "; ".join(f"{key} (SimpleTuner: {diff.simpletuner!r}): {diff.reason}" for key, diff in applying)
    return f"{where}: defaults here that differ from SimpleTuner's on purpose (docs/simpletuner.md): {listed}"
