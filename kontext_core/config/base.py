"""The error type, the strict model base and the one-line-per-problem formatting of config errors.

Every problem in a config file is reported at once, one line each: field errors come from pydantic
(all of them, not the first), cross-key rules from each model's `rule_problems`, and unknown keys
name the nearest valid key only when it is truly close (a far-fetched hint misleads more than none).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, model_validator

# difflib ratio above which a key counts as a misspelling: `learning_rat` (0.96) and `refs` (0.86)
# qualify; `resolution` → `revision` (0.78) and `vae_batch_size` → `train_batch_size` (0.8) do not.
CLOSE_ENOUGH = 0.85


# Not-applicable values that match this pipeline's behaviour (no warning). Otherwise a false, zero
# or empty value counts as "feature off", which is what this pipeline does, except for the
# disable_* keys, where off means on.
HARMLESS_VALUES: dict[str, Any] = {
    "disable_benchmark": False,
    "disable_bucket_pruning": True,
    "grad_clip_method": "norm",
    **{f"text_encoder_{n}_precision": "no_change" for n in range(1, 5)},
}


def harmless(key: str, value: Any) -> bool:
    if key in HARMLESS_VALUES:
        return value == HARMLESS_VALUES[key]
    off = value is None or value is False or value == 0
    off = off or (isinstance(value, str) and value.lower() in ("", "none", "false"))
    return off and not key.startswith("disable")


class ConfigError(ValueError):
    """Configuration problems, one line each; `str()` joins them."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def suggest(key: str, allowed: list[str]) -> str:
    """`did you mean 'x'?` when one allowed name is truly close to `key`, else empty."""
    near = difflib.get_close_matches(key, allowed, n=1, cutoff=CLOSE_ENOUGH)
    return f"did you mean '{near[0]}'?" if near else ""


def with_hint(message: str, key: str, allowed: list[str]) -> str:
    hint = suggest(key, allowed)
    return f"{message}; {hint}" if hint else message


class Strict(BaseModel):
    """A config model: unknown keys are errors, and cross-key rules live in `rule_problems`.

    `NOT_APPLICABLE` names keys SimpleTuner knows that this pipeline accepts but does not act on
    (key → why); `HARMLESS` gives, per such key, the value that matches this pipeline's behaviour,
    so a config that sets it to that value is not warned about.
    """

    # inf and nan pass every `> 0` bound (learning_rate=inf trained on NaN losses): a number is finite.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    NOT_APPLICABLE: ClassVar[dict[str, str]] = {}
    HARMLESS: ClassVar[dict[str, Any]] = {}
    # Keys accepted without a field of their own (aliases, SimpleTuner keys kept aside): hints may name them.
    OTHER_KNOWN_KEYS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def known_keys(cls) -> list[str]:
        return [*cls.model_fields, *sorted(cls.OTHER_KNOWN_KEYS)]

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any, info: ValidationInfo) -> Any:
        # Built directly in code: name the nearest key, as pydantic's "extra input" does not. The
        # loader (context "collect") lets pydantic report them so that other errors come too.
        if isinstance(data, dict) and not (info.context and info.context.get("collect")):
            unknown = [key for key in data if key not in cls.model_fields]
            if unknown:
                allowed = cls.known_keys()
                raise ValueError("\n".join(with_hint(f"unknown key '{k}'", str(k), allowed) for k in unknown))
        return data

    def rule_problems(self) -> list[str]:
        """Cross-key rules: one message per broken rule (the message starts with the key)."""
        return []

    @model_validator(mode="after")
    def _cross_key_rules(self, info: ValidationInfo) -> Any:
        # The loader re-validates a config without its broken keys to find the remaining rule
        # problems itself; it asks for the rules to be skipped then and calls rule_problems.
        if info.context and info.context.get("skip_rules") is type(self):
            return self
        problems = self.rule_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def not_applicable_set(self) -> list[str]:
        """The not-applicable keys this model sets to something other than the harmless value."""
        return [
            key
            for key in self.NOT_APPLICABLE
            if key in self.model_fields_set and (key not in self.HARMLESS or getattr(self, key) != self.HARMLESS[key])
        ]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    origin = typing.get_origin(annotation)
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            found.extend(_models_in(arg))
    return found


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], list[type[BaseModel]]]:
    """The loc with pydantic's union-branch tags dropped, and the models that could hold its last key."""
    path: list[str] = []
    models: list[type[BaseModel]] = [root]
    for position, step in enumerate(loc):
        if isinstance(step, int):
            path.append(f"[{step}]")
            continue
        owner = next((m for m in models if step in m.model_fields), None)
        if owner is not None:
            path.append(str(step))
            models = _models_in(owner.model_fields[step].annotation) or models
        elif position == len(loc) - 1:
            path.append(str(step))  # an unknown key: the last step names it
    return path, models


def _known_keys_of(model: type[BaseModel]) -> list[str]:
    return model.known_keys() if issubclass(model, Strict) else list(model.model_fields)


def _join(path: list[str]) -> str:
    return "".join(p if p.startswith("[") else (f".{p}" if i else p) for i, p in enumerate(path))


def validation_problems(err: ValidationError, where: str, root: type[BaseModel]) -> list[str]:
    """One line per problem, first error per key (a union reports each branch's complaint)."""
    lines: list[str] = []
    seen: set[str] = set()
    for error in err.errors():
        path, models = _walk(root, tuple(error["loc"]))
        key = _join(path)
        if key in seen:
            continue
        seen.add(key)
        prefix = f"{where}: {key}" if key else where
        kind, message = error["type"], error["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            allowed = [name for model in models for name in _known_keys_of(model)]
            parent = _join(path[:-1])
            owner = f"{where}: {parent}" if parent else where
            lines.append(with_hint(f"{owner}: unknown key '{path[-1]}'", path[-1], allowed))
        elif kind == "missing":
            lines.append(f"{where}: missing required key '{key}'")
        elif kind == "value_error" and isinstance(error.get("input"), dict):
            # A model's cross-key rules: each line already names its keys.
            lines.extend(f"{prefix}: {line}" for line in message.splitlines())
        else:
            lines.append(f"{prefix} = {error.get('input')!r}: {message}")
    return lines


def broken_top_keys(err: ValidationError) -> set[str]:
    """Top-level keys with a problem of their own or inside them (to re-validate the rest without them)."""
    return {str(e["loc"][0]) for e in err.errors() if e["loc"]}


def validate_all(root: type[BaseModel], data: dict[str, Any], where: str) -> tuple[Any, list[str]]:
    """Validate `data`; on failure also run the cross-key rules on the keys that are fine.

    Returns (model or None, problems). The model is None only when even the keys that are fine
    do not make a model (a required key missing). Callers that carry on with the model (to check
    it against other models) must not use it when problems is not empty.
    """
    try:
        return root.model_validate(data, context={"collect": True}), []
    except ValidationError as exc:
        problems = validation_problems(exc, where, root)
        broken = broken_top_keys(exc)
        if not any(e["loc"] for e in exc.errors()):
            # Only the model's own rules failed, all listed: keep the model for checks across models.
            return root.model_validate(data, context={"collect": True, "skip_rules": root}), problems
    rest = {k: v for k, v in data.items() if k not in broken}
    try:
        model = root.model_validate(rest, context={"collect": True, "skip_rules": root})
    except ValidationError:
        return None, problems
    rules = [line for line in model.rule_problems() if not any(_mentions(line, key) for key in broken)]
    return model, problems + [f"{where}: {line}" for line in rules]


def _mentions(line: str, key: str) -> bool:
    # A rule that involves a broken key would judge the default that replaced it.
    return re.search(rf"\b{re.escape(key)}\b", line) is not None
