"""`kontext config import-simpletuner`: a SimpleTuner config.json as the equivalent params.yaml.

Every key of the source appears in the output with a comment: acted on keys as they are, mapped
keys under their name here, not-applicable keys commented out with the reason. The result loads
to the same Params as `--params config.json` does (a test holds this).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kontext_core.config import simpletuner
from kontext_core.config.base import ConfigError
from kontext_core.config.load import params_problems, read_params_file


def _yaml_value(value: Any) -> str:
    # JSON is valid YAML for scalars and lists; strings are quoted so "no" stays a string.
    if isinstance(value, float) and "e" in repr(value) and "." not in repr(value):
        # YAML 1.1 (PyYAML) reads 1e-08 as a string; 1.0e-08 is a float in every YAML.
        mantissa, exponent = repr(value).split("e")
        return f"{mantissa}.0e{exponent}"
    return json.dumps(value, ensure_ascii=False)


def render_params_yaml(config_json: Path | str) -> str:
    path = Path(config_json)
    raw = read_params_file(path)
    _, problems = params_problems(raw, str(path))
    if problems:
        raise ConfigError(problems)
    translation = simpletuner.translate(raw, str(path))
    lines = [
        f"# params.yaml from SimpleTuner's {path.name} (kontext config import-simpletuner).",
        "# Keys acted on keep their name and meaning; the others are mapped or set aside below.",
        "",
    ]
    sections: dict[str, dict[str, tuple[Any, str]]] = {}
    for raw_key, value in raw.items():
        key = str(raw_key).lstrip("-")
        if key in translation.data and key not in simpletuner.pipeline_sections():
            lines.append(f"{key}: {_yaml_value(value)}  # acted on")
    for key, value in translation.mapped.items():
        mapping = simpletuner.MAPPED[key]
        if mapping.target is None:
            lines.append(f"# {key}: {_yaml_value(value)}  # mapped: {mapping.note}")
            continue
        head, _, rest = mapping.target.partition(".")
        if rest:
            sections.setdefault(head, {})[rest] = (value, f"from {key}: {mapping.note}")
        else:
            lines.append(f"{head}: {_yaml_value(value)}  # from {key}: {mapping.note}")
    for key, value in {**translation.not_applicable, **translation.quiet}.items():
        lines.append(f"# {key}: {_yaml_value(value)}  # not applicable here: {simpletuner.reason(key)}")
    for section, values in sections.items():
        lines += ["", f"{section}:"]
        lines += [f"  {k}: {_yaml_value(v)}  # {why}" for k, (v, why) in values.items()]
    return "\n".join(lines) + "\n"
