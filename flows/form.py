"""The run form: the `kontext-train` flow's parameters as typed, described, validated fields.

The types, constraints and descriptions come from `kontext_core.config.overrides.RunOverrides`, so the
Prefect UI's form, `prefect deployment run --param` and the CLI check the same rules; `None` (left
empty in the form) keeps the value of the params file.
"""

from types import SimpleNamespace
from typing import Annotated, Any, Literal

from pydantic import Field

from kontext_core.config.overrides import OVERRIDE_KEYS, RunOverrides


def typed(key: str) -> Any:
    """`Optional[Annotated[T, constraints]]` with the field's description, for a flow signature."""
    field = RunOverrides.model_fields[key]
    inner = [arg for arg in getattr(field.annotation, "__args__", (field.annotation,)) if arg is not type(None)]
    base = inner[0] if len(inner) == 1 else field.annotation
    constrained = Annotated[(base, *field.metadata)] if field.metadata else base
    return constrained | None


def default(key: str) -> Any:
    """`None` with the field's description (Prefect reads a parameter's description from its default)."""
    return Field(None, description=RunOverrides.model_fields[key].description)


def choice_of_adapter_kinds() -> Any:
    """`lora_type` as a choice among the registered adapter kinds (a drop-down in the UI): the kinds are a
    registry (kontext_core.model.adapter_kinds), so the config keeps a string and the form lists them."""
    from kontext_core.model.adapter_kinds import ADAPTER_KINDS

    return Literal[tuple(ADAPTER_KINDS)] | None


# `T.learning_rate` is the type of the flow's `learning_rate` parameter, `D.learning_rate` its default.
T = SimpleNamespace(**{key: typed(key) for key in OVERRIDE_KEYS} | {"lora_type": choice_of_adapter_kinds()})
D = SimpleNamespace(**{key: default(key) for key in OVERRIDE_KEYS})
