"""Rebuild a params.yaml from the flattened params MLflow logged (run-time overrides included).

MLflow holds `str(value)` per dotted key (kontext_core.tracking.lineage.flat_params). The commit's
params.yaml gives the structure and the type hints; every logged key is written back into it. The
rebuilt file is checked afterwards by the commit's own code (round trip, in the rebuild driver).
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Override:
    """A key whose logged value differs from the commit's params.yaml (set at run time)."""

    key: str
    in_file: str
    logged: str


def parse_logged(text: str, hint: Any) -> Any:
    """The value `str(value)` was made from; a string stays a string where the file had one."""
    if isinstance(hint, str) and not text.startswith(("[", "{")):
        return text  # a key that takes a string or a list ("all" or [suffixes]) may hold either
    try:
        value = ast.literal_eval(text)  # None, True, numbers, lists, {} as Python's str() wrote them
    except (ValueError, SyntaxError):
        return text
    return value if not isinstance(hint, str) or isinstance(value, (list, dict)) else text


def restore(file_params: dict[str, Any], logged: dict[str, str]) -> tuple[dict[str, Any], list[Override]]:
    restored = copy.deepcopy(file_params)
    overrides = []
    for key in sorted(logged):
        node = restored
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        hint = node.get(leaf)
        value = parse_logged(logged[key], hint)
        # Equal values, not equal text: the schema may have coerced the file's 16 to 16.0.
        if leaf in node and not isinstance(hint, dict) and value != hint:
            overrides.append(Override(key, str(hint), logged[key]))
        node[leaf] = value
    return restored, overrides


def pipeline_params(logged: dict[str, str]) -> dict[str, str]:
    """The run's params that are pipeline settings; it also holds others (the logged model's config)."""
    from kontext_core.config import Params

    return {k: v for k, v in logged.items() if k.split(".")[0] in Params.model_fields}


def pin_hub_revision(logged: dict[str, str], base_model_tag: str | None) -> dict[str, str]:
    """The logged params with `revision` set to the commit the run's hub base resolved to.

    A run records `revision: main` as typed, and `main` may have moved since; the lineage tag
    (kontext_core.tracking.lineage.BASE_MODEL_TAG) holds the commit it named then, and the rebuild
    reads exactly that snapshot. A local base, or a tag from before commits were recorded, is left
    as logged.
    """
    import json

    try:
        base = json.loads(base_model_tag) if base_model_tag else None
    except ValueError:
        return logged
    if not isinstance(base, dict) or "commit" not in base:
        return logged
    if logged.get("pretrained_model_name_or_path") != base.get("hub_id"):
        return logged
    return {**logged, "revision": str(base["commit"])}
