"""Where the base model comes from (hub id or local folder) and what identifies it.

A hub id is identified by the commit its revision resolves to (kontext_core.hub.resolve), never
by the word `main`; a local folder by its content. Kept free of torch/diffusers imports:
fingerprints are computed before any stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kontext_core.config import Params
from kontext_core.fsutil import sha256_tree
from kontext_core.hub.resolve import HubSnapshot, resolve


@dataclass(frozen=True)
class ModelLocation:
    """What `from_pretrained` is given: a folder (a local model or a cached hub snapshot) with no
    revision, or, for a hub id the cache does not hold, the id pinned to its resolved commit."""

    source: str
    revision: str | None
    hub: HubSnapshot | None = None


def _local_dir(params: Params, workdir: Path) -> Path | None:
    candidate = Path(params.pretrained_model_name_or_path).expanduser()
    local = candidate if candidate.is_absolute() else workdir / candidate
    return local.resolve() if local.exists() else None


def model_location(params: Params, workdir: Path) -> ModelLocation:
    local = _local_dir(params, workdir)
    if local is not None:
        return ModelLocation(str(local), None)
    hub = resolve(params.pretrained_model_name_or_path, params.revision)
    if hub.path is not None:
        return ModelLocation(str(hub.path), None, hub)
    return ModelLocation(hub.repo_id, hub.commit, hub)


def resolve_model_source(params: Params, workdir: Path) -> str:
    """A local directory (made absolute), the cached snapshot of a hub id, or the hub id."""
    return model_location(params, workdir).source


def is_hub_model(params: Params, workdir: Path) -> bool:
    return _local_dir(params, workdir) is None


def model_fingerprint(params: Params, workdir: Path) -> dict[str, Any]:
    """The content of a local model folder, or the hub id and the commit its revision resolves to."""
    local = _local_dir(params, workdir)
    if local is not None:
        return {"local": sha256_tree(local, large_file_bytes=256 << 20)}
    return resolve(params.pretrained_model_name_or_path, params.revision).identity()


def model_inputs(params: Params, workdir: Path) -> dict[str, Any]:
    """The base model's identity as a stage's extra fingerprint input."""
    return {"base_model": model_fingerprint(params, workdir)}
