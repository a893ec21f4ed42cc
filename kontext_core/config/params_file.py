"""Reading `params.yaml` the way DVC reads and writes it: YAML 1.2.

`dvc exp run -S key=value` rewrites the whole file with ruamel.yaml's YAML 1.2 writer, which leaves
strings such as `no` unquoted and writes nulls blank. A YAML 1.1 loader (PyYAML) would read that
`no` back as False and `1e-5` as a string, so the pipeline would see other values than DVC shows in
`dvc params diff`. Loading with ruamel.yaml's safe loader, exactly as DVC does, keeps one meaning.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError


class ParamsFileError(ValueError):
    """The text is not valid YAML; the message is the parser's first line."""


def parse_params_text(text: str) -> Any:
    # typ="safe" is DVC's own params reader (dvc.utils.serialize.parse_yaml): plain data, YAML 1.2.
    try:
        return YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise ParamsFileError(str(exc).strip().splitlines()[0]) from exc
