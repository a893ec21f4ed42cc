"""What each stage reads from the user's own files, as DVC deps.

A stage's fingerprint hashes the dataset file, every local folder or parquet file it names and a
local base model; DVC must see the same files, or `dvc status` calls a stage up to date while
`kontext run` re-runs it. The paths come from `params.yaml` and the dataset file, so `dvc.yaml`
is regenerated (`kontext dvc-yaml`) when they change, and `kontext dvc-yaml --check` says when it
is stale. Remote sources (hub ids) are no DVC dep: the fingerprint records the id, split and
revision, and the stage re-runs when they change.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from kontext_core.config import ConfigError, DatasetEntry, Params
from kontext_core.data.backends import backend_for


def as_dep(location: str, root: Path) -> str:
    """Project-relative (POSIX) when inside the project, absolute (DVC's external dep) otherwise."""
    path = Path(location).expanduser()
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def is_local(location: str, root: Path, produced: list[str]) -> bool:
    """A local path rather than a hub id, decided the same on a fresh clone as after a run."""
    path = Path(location).expanduser()
    if path.is_absolute() or (root / path).exists():
        return True
    rel = path.as_posix()
    if any(rel == out or rel.startswith(out + "/") for out in produced):
        return True  # built by a stage (the demo's tiny model and sample data)
    # Hub ids are `name` or `org/name`; deeper or dotted-relative names are paths.
    return rel.startswith(("./", "../")) or rel.count("/") >= 2


def dataset_entries(dataset_file: Path) -> list[DatasetEntry]:
    """The enabled entries, without the existence checks of load_datasets (folders may not exist yet)."""
    try:
        raw = json.loads(dataset_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{dataset_file}: cannot read the dataset file: {exc}") from exc
    if not isinstance(raw, list):
        raise ConfigError(f"{dataset_file}: expected a JSON list of dataset entries")
    try:
        entries = [DatasetEntry.model_validate(item) for item in raw]
    except ValidationError as exc:
        raise ConfigError(f"{dataset_file}: {exc.errors()[0]['msg']}") from None
    return [e for e in entries if not e.disabled]


def dataset_locations(params: Params, root: Path, produced: list[str]) -> list[str]:
    """Local folders and parquet/arrow files the dataset file points at (what fetch fingerprints)."""
    data_file = Path(params.data_backend_config)
    deps: list[str] = []
    for entry in dataset_entries(data_file if data_file.is_absolute() else root / data_file):
        if entry.dataset_type == "text_embeds":
            continue
        backend = backend_for(entry)
        location = backend.local_location(entry)
        if location and (backend.ref_prefix is None or is_local(location, root, produced)):
            deps.append(as_dep(location, root))
    return deps


def stage_data_deps(params: Params, root: Path, produced: list[str]) -> dict[str, list[str]]:
    """Per stage, the user files its fingerprint reads (mirrors the stages' extra inputs)."""
    dataset_file = as_dep(params.data_backend_config, root)
    model = params.pretrained_model_name_or_path
    model_deps = [as_dep(model, root)] if is_local(model, root, produced) else []
    return {
        "fetch": [dataset_file, *dataset_locations(params, root, produced)],
        "pair": [dataset_file],
        "cache_vae": model_deps,
        "cache_text": model_deps,
        "quantize": model_deps,
        "validate": model_deps,
        # Read only with lora_type: lycoris, but a dep either way: `-S lora_type=lycoris` then needs
        # no new dvc.yaml.
        # The prompt library only when one is set (a dep on a file that does not exist stops dvc repro).
        "train": [
            as_dep(params.lycoris_config, root),
            *([as_dep(params.user_prompt_library, root)] if params.user_prompt_library else []),
        ],
    }
