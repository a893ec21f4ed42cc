"""Which recorded input no longer matches: params, data digests, base model, libraries, stage inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kontext_core.reproduce.record import Recorded
from kontext_core.tracking.environment import DEVICE_TAG, ENV_PREFIX, library_versions

MANIFESTS = "artifacts/manifests"


def _manifest(project: Path, stage: str) -> dict[str, Any] | None:
    path = project / MANIFESTS / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _as_tag(value: Any) -> str:
    # How kontext_core.tracking.lineage writes a data digest into a tag.
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def data_mismatches(recorded: Recorded, checkout_project: Path) -> list[str]:
    fetch = _manifest(checkout_project, "fetch")
    if fetch is None:
        return []
    now = {key.removeprefix("dataset:"): _as_tag(v) for key, v in fetch["inputs"].items()
           if key.startswith("dataset:") or key == "data_backend_config"}
    found = []
    for name, digest in recorded.data_digests().items():
        what = "the dataset file" if name == "data_backend_config" else f"dataset '{name}'"
        if name not in now:
            found.append(f"{what} is no longer in the dataset file")
        elif now[name] != digest:
            found.append(f"{what}: digest {_short(now[name])} now, {_short(digest)} recorded")
    return found


def _short(digest: str) -> str:
    return digest[:12] if len(digest) == 64 else digest


def library_mismatches(recorded: Recorded) -> list[str]:
    here = library_versions()
    found = []
    for name, version in here.items():
        was = recorded.tags.get(f"{ENV_PREFIX}{name}")
        if was is not None and was != version:
            found.append(f"{name} {version} here, {was} recorded")
    return found


def environment_notes(recorded: Recorded) -> list[str]:
    if not any(key.startswith(ENV_PREFIX) for key in recorded.tags):
        return ["the run recorded no library versions or device (it predates those tags)"]
    return [f"trained on {recorded.tags.get(DEVICE_TAG, 'an unrecorded device')}"]


def _material_cause(stage: str, was: dict[str, Any], now: dict[str, Any], stages: list[str]) -> str | None:
    """What differs in a stage's own inputs: code, params subset, extra inputs (dataset file, base model).

    Upstream output hashes are left out: fetch's records and the scan cache hold absolute paths, so
    they differ between the project and its checkout even for the same data; the adapter
    comparison is the end-to-end check of those.
    """
    if was.get("code_version") != now.get("code_version"):
        return f"the code of stage {stage}"
    for key in sorted(set(was["params"]) | set(now["params"])):
        if was["params"].get(key) != now["params"].get(key):
            return f"params key {key}"
    for key in sorted(set(was["inputs"]) | set(now["inputs"])):
        if key in stages or key.startswith("dataset:") or key == "data_backend_config":
            continue  # upstream outputs (above); data digests are compared with the run's tags
        if was["inputs"].get(key) != now["inputs"].get(key):
            if key == "base_model":
                return "base model: its files are not the recorded ones"
            return f"input {key} of stage {stage}"
    return None


def input_mismatch(recorded: Recorded, checkout_project: Path, project: Path, stages: list[str]) -> str | None:
    """The first stage whose own recorded inputs differ in the rebuild, and what differs.

    The recorded material is the project's manifest of the stage while its fingerprint is still the
    recorded one (the project has not moved on since that run); other stages are not compared.
    """
    for stage in stages:
        want, rebuilt, was = recorded.fingerprint(stage), _manifest(checkout_project, stage), _manifest(project, stage)
        if want is None or rebuilt is None or was is None or was["fingerprint"] != want:
            continue
        if rebuilt["fingerprint"] != want and (cause := _material_cause(stage, was, rebuilt, stages)):
            return f"stage {stage}: {cause}"
    return None
