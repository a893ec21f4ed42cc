"""The run form: the run settings as one typed model parameter of every flow that runs the pipeline.

`RunSettings` is `kontext_core.config.overrides.RunOverrides` (the same fields, constraints and
descriptions, so the Prefect UI's form, `prefect deployment run --param settings=...` and `kontext run
--set` check the same rules) with `lora_type` as a choice among the registered adapter kinds (a
drop-down in the UI). Prefect renders a pydantic model parameter as a form; a field left empty (`None`)
keeps the value of the params file. An instance passed to a flow is not validated again.
"""

from typing import Any, Literal

from pydantic import Field

from kontext_core.config.overrides import RunOverrides, check_overrides


def choice_of_adapter_kinds() -> Any:
    """`lora_type` as a choice among the registered adapter kinds: the kinds are a registry
    (kontext_core.model.adapter_kinds), so the config keeps a string and the form lists them."""
    from kontext_core.model.adapter_kinds import ADAPTER_KINDS

    return Literal[tuple(ADAPTER_KINDS)] | None


class RunSettings(RunOverrides):
    """Run settings over the params file; an empty field keeps the file's value."""

    lora_type: choice_of_adapter_kinds() = Field(  # type: ignore[valid-type]
        None, description=RunOverrides.model_fields["lora_type"].description
    )


def run_settings(values: dict[str, Any]) -> RunSettings:
    """`kontext run --set` values as the flows' settings parameter, checked once (one line per problem)."""
    return check_overrides(values, model=RunSettings)  # type: ignore[return-value]


# The flows' parameter: `settings: RunSettings = SETTINGS`.
SETTINGS: Any = Field(
    RunSettings(),
    description="Run settings over the params file (the form's fields); an empty field keeps the file's value.",
)
