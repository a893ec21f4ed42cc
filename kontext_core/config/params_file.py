"""Reading `params.yaml` the way DVC reads and writes it: YAML 1.2.

`dvc exp run -S key=value` rewrites the whole file with ruamel.yaml's YAML 1.2 writer, which leaves
strings such as `no` unquoted and writes nulls blank. A YAML 1.1 loader (PyYAML) would read that
`no` back as False and `1e-5` as a string, so the pipeline would see other values than DVC shows in
`dvc params diff`. Loading with ruamel.yaml's safe loader, exactly as DVC does, keeps one meaning.

Aliases are shared references after loading, so a few lines (`b: &b [*a, *a, ...]` nine levels deep)
load in microseconds and then expand to billions of values in whatever walks them (the config checks
took 2.9 GB and a minute on one). The loaded value's expanded size is counted (once per shared
node) and refused beyond ALIAS_BUDGET values; a file without aliases is never refused for its size.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError


class ParamsFileError(ValueError):
    """The text is not valid YAML; the message is the parser's first line."""


class AliasBudgetError(ParamsFileError):
    """Valid YAML whose aliases expand beyond ALIAS_BUDGET: refused, never read as a plain string."""


# Values (scalars and containers) aliases may add to a document; a real params or dataset file holds a
# few hundred values in all.
ALIAS_BUDGET = 100_000


def parse_params_text(text: str) -> Any:
    # typ="safe" is DVC's own params reader (dvc.utils.serialize.parse_yaml): plain data, YAML 1.2.
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise ParamsFileError(str(exc).strip().splitlines()[0]) from exc
    except RecursionError:
        raise ParamsFileError("nested too deeply to read") from None
    expanded, distinct = expanded_size(data)
    if expanded - distinct > ALIAS_BUDGET:
        raise AliasBudgetError(
            f"its aliases add more than {ALIAS_BUDGET:,} values to the {distinct:,} written: refused, "
            "write the values out or use fewer nested aliases"
        )
    return data


def expanded_size(data: Any) -> tuple[int, int]:
    """(values the data holds once every alias is expanded, values it holds as loaded), counted once per
    shared container. A container that contains itself (a recursive alias) counts as over any budget."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()
    written = [1]  # the top value, then each child slot of each distinct container

    def size(value: Any) -> int:
        if not isinstance(value, dict | list):
            return 1
        key = id(value)
        if key in sizes:
            return sizes[key]
        if key in open_ids:
            raise RecursionError
        open_ids.add(key)
        children = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        total = 1
        for _, child in children:
            written[0] += 1
            total += size(child)
        open_ids.discard(key)
        sizes[key] = total
        return total

    try:
        expanded = size(data)
    except RecursionError:
        return 1 << 62, 0
    return expanded, written[0]
