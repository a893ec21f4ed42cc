"""Where the base model comes from (hub id or local folder) and what identifies it.

Kept free of torch/diffusers imports: fingerprints are computed before any stage runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kontext_core.config import Params
from kontext_core.fsutil import sha256_tree


def resolve_model_source(params: Params, workdir: Path) -> str:
    """A local directory (made absolute) or the hub id as given."""
    candidate = Path(params.pretrained_model_name_or_path).expanduser()
    local = candidate if candidate.is_absolute() else workdir / candidate
    if local.exists():
        return str(local.resolve())
    return params.pretrained_model_name_or_path


def model_fingerprint(params: Params, workdir: Path) -> dict[str, Any]:
    """The content of a local model folder, or the hub id + revision."""
    source = resolve_model_source(params, workdir)
    if Path(source).exists():
        return {"local": sha256_tree(Path(source), large_file_bytes=256 << 20)}
    return {"hub_id": source, "revision": params.revision}


def model_inputs(params: Params, workdir: Path) -> dict[str, Any]:
    """The base model's identity as a stage's extra fingerprint input."""
    return {"base_model": model_fingerprint(params, workdir)}
