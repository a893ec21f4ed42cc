"""Reading the two config files, with every problem of a file reported at once.

`--params` takes params.yaml or SimpleTuner's config.json as it is (bare or `--`-prefixed keys);
both go through the same key table (kontext_core.config.simpletuner). Keys that are accepted but
do nothing here are listed in one warning per file and process.
"""

from __future__ import annotations

import json
import logging
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kontext_core.config import simpletuner
from kontext_core.config.base import ConfigError, validate_all
from kontext_core.config.checks import datasets_with_params_problems
from kontext_core.config.datasets import DatasetConfig, DatasetEntry
from kontext_core.config.params import Params
from kontext_core.config.params_file import ParamsFileError, parse_params_text
from kontext_core.config.simpletuner_defaults import differences_note, refused_value_problem
from kontext_core.config.simpletuner_keys import DEPRECATED_DATASET_KEYS

log = logging.getLogger("kontext_core.config")

_warned: set[str] = set()
DATASET_GENERIC_REASON = "SimpleTuner dataset option that this pipeline does not implement"


def _warn_once(message: str, level: int = logging.WARNING) -> None:
    # Stages re-read the files many times per run; the message is news once.
    if message not in _warned:
        _warned.add(message)
        log.log(level, message)


def read_mapping(path: Path) -> Any:
    """A params file's content: JSON for `.json` (SimpleTuner's config.json), YAML otherwise."""
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    try:
        return parse_params_text(text)
    except ParamsFileError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


# An empty params file (no keys: blank, comments only, `{}`) would run with every default, the demo's
# tiny model included, and overwrite a real project's adapter: refused unless this is set to 1. A file
# that writes keys chose them, even where they equal the defaults.
ALLOW_DEFAULTS_ENV = "KONTEXT_ALLOW_DEFAULT_PARAMS"


def _defaults_allowed() -> bool:
    return os.environ.get(ALLOW_DEFAULTS_ENV) == "1"


def read_params_file(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, expected a parameter file (params.yaml or config.json)")
    if not path.exists():
        raise ConfigError(f"{path}: parameter file not found")
    data = read_mapping(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    if not data and not _defaults_allowed():
        raise ConfigError(
            f"{path}: is empty: every key would take its default and overwrite this project's outputs; "
            f"write the keys (see params.yaml in the project template) or set {ALLOW_DEFAULTS_ENV}=1"
        )
    return data


def params_problems(data: dict[str, Any], where: str) -> tuple[Params | None, list[str]]:
    """The params model (broken keys left at their defaults) and every problem, one line each."""
    translation = simpletuner.translate(data, where)
    refused = []
    for key, value in list(translation.data.items()):
        if line := refused_value_problem(key, value, _allowed(key)):
            refused.append(f"{where}: {line}")
            del translation.data[key]
    params, problems = validate_all(Params, translation.data, where)
    problems = refused + problems
    if "model_family" in translation.data and "model_flavour" not in translation.data:
        _warn_once(
            f"{where}: model_flavour is not set: SimpleTuner would train model_family "
            f"{translation.data['model_family']!r}'s default flavour (not Kontext); this pipeline trains FLUX.1 "
            "Kontext only and trains this file's model as Kontext: set model_flavour: kontext to say so"
        )
    if note := differences_note(where, set(translation.data)):
        _warn_once(note, logging.INFO)
    if translation.not_applicable:
        keys = {key: simpletuner.reason(key) for key in translation.not_applicable}
        _warn_once(simpletuner.not_applicable_warning(where, keys))
    if translation.mapped:
        moved = ", ".join(
            f"{k} → {simpletuner.MAPPED[k].target or simpletuner.MAPPED[k].note}" for k in translation.mapped
        )
        _warn_once(f"{where}: SimpleTuner keys mapped: {moved}", logging.INFO)
    return params, translation.unknown + problems


def _allowed(key: str) -> str:
    field = Params.model_fields.get(key)
    choices = typing.get_args(field.annotation) if field is not None else ()
    return ", ".join(str(c) for c in choices if isinstance(c, str)) or "see docs/simpletuner.md"


def params_from_dict(data: dict[str, Any], where: str = "params") -> Params:
    params, problems = params_problems(data, where)
    if problems or params is None:
        raise ConfigError(problems)
    return params


def load_params(path: Path | str) -> Params:
    return params_from_dict(read_params_file(path), where=str(path))


def _entry_problems(raw: list[Any], path: Path) -> tuple[list[DatasetEntry], list[str]]:
    entries: list[DatasetEntry] = []
    problems: list[str] = []
    for index, item in enumerate(raw):
        where = f"{path}: dataset[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object")
            continue
        if "id" in item:
            where = f"{path}: dataset '{item['id']}'"
        entry, found = validate_all(DatasetEntry, item, where)
        problems.extend(found)
        if entry is not None:
            entries.append(entry)
    return entries, problems


def _not_applicable_keys(entries: list[DatasetEntry]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for entry in entries:
        for key in entry.not_applicable_set():
            keys[key] = entry.NOT_APPLICABLE.get(key, DATASET_GENERIC_REASON)
        if entry.huggingface is not None:
            for key in entry.huggingface.not_applicable_set():
                keys[f"huggingface.{key}"] = entry.huggingface.NOT_APPLICABLE[key]
    return keys


# Checks that belong to layers above the config (dataset backends, adapter kinds), passed in by the
# caller so that every problem is still reported at once: (params or None, datasets, project) -> lines.
ExtraChecks = Callable[[Params | None, DatasetConfig, Path], list[str]]


def dataset_problems(
    path: Path | str,
    base_dir: Path | None = None,
    params: Params | None = None,
    extra_checks: ExtraChecks | None = None,
) -> tuple[DatasetConfig | None, list[str]]:
    """The dataset config (defaults from `params`) and every problem in it, one line each."""
    path = Path(path)
    if path.is_dir():
        return None, [f"{path}: is a folder, expected the dataset file (a JSON list of dataset entries)"]
    if not path.exists():
        return None, [f"{path}: dataset config not found"]
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return None, [f"{path}: not valid JSON: {exc}"]
    if not isinstance(raw, list):
        return None, [f"{path}: expected a JSON list of dataset entries"]
    entries, problems = _entry_problems(raw, path)
    # The entries are validated already; the rules across them are run (and listed) just below.
    config = DatasetConfig.model_construct(entries=entries)
    if params is None:
        # The caller checks against its params.yaml next (check_datasets_with_params): rules on keys
        # that may come from there wait for it.
        problems += [f"{path}: {line}" for line in config.structure_problems()]
    else:
        problems += [f"{path}: {line}" for line in datasets_with_params_problems(params, config)]
    if extra_checks is not None:
        problems += [f"{path}: {line}" for line in extra_checks(params, config, base_dir or Path.cwd())]
    not_applicable = _not_applicable_keys(config.entries)
    if not_applicable:
        _warn_once(simpletuner.not_applicable_warning(str(path), not_applicable))
    deprecated = sorted({key for entry in config.entries for key in entry.deprecated_set()})
    if deprecated:
        listed = "; ".join(f"{key} ({DEPRECATED_DATASET_KEYS[key]})" for key in deprecated)
        _warn_once(f"{path}: deprecated SimpleTuner dataset keys, no effect: {listed}")
    return config, problems


def load_datasets(
    path: Path | str,
    base_dir: Path | None = None,
    params: Params | None = None,
    extra_checks: ExtraChecks | None = None,
) -> DatasetConfig:
    """Load a SimpleTuner `multidatabackend.json`, resolve its defaults and check it.

    `base_dir` is where relative `instance_data_dir` paths are resolved (the project root);
    `params` gives the dataset defaults (its `resolution`, `resolution_type`, ...).
    """
    config, problems = dataset_problems(path, base_dir, params, extra_checks)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def data_backend_path(params: Params, project_dir: Path) -> Path:
    path = Path(params.data_backend_config)
    return path if path.is_absolute() else project_dir / path


def load_all(
    params_path: Path | str, project_dir: Path | None = None, extra_checks: ExtraChecks | None = None
) -> tuple[Params, DatasetConfig]:
    """Load params.yaml (or config.json) and the dataset file it names; all problems of both at once."""
    params_path = Path(params_path)
    project_dir = Path(project_dir) if project_dir else params_path.resolve().parent
    params, problems = params_problems(read_params_file(params_path), str(params_path))
    datasets = None
    if params is not None:
        datasets, found = dataset_problems(data_backend_path(params, project_dir), project_dir, params, extra_checks)
        problems += found
    if problems or params is None or datasets is None:
        raise ConfigError(problems)
    return params, datasets
