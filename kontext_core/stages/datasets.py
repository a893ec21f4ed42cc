"""The dataset file as the fetch and pair stages read it: checked, and fingerprinted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kontext_core.config import DatasetConfig, Params
from kontext_core.fsutil import sha256_file


def dataset_file(params: Params, workdir: Path) -> Path:
    path = Path(params.data_backend_config)
    return path if path.is_absolute() else workdir / path


def registered_kind_problems(params: Params | None, datasets: DatasetConfig, workdir: Path) -> list[str]:
    """What the dataset backends and the adapter kind say about a config (all problems, one line each)."""
    from kontext_core.data.backends import entry_problems
    from kontext_core.model.adapter_kinds import ADAPTER_KINDS

    problems = entry_problems(datasets, workdir)
    if params is not None and params.lora_type not in ADAPTER_KINDS:
        problems.append(f"lora_type = {params.lora_type!r}: unknown adapter kind; allowed: {', '.join(ADAPTER_KINDS)}")
    return problems


def load_checked_datasets(params: Params, workdir: Path) -> DatasetConfig:
    """The dataset file the params name, with the params' defaults, checked together and by the backends."""
    from kontext_core.config import load_datasets

    return load_datasets(
        dataset_file(params, workdir), base_dir=workdir, params=params, extra_checks=registered_kind_problems
    )


def dataset_file_input(params: Params, workdir: Path) -> dict[str, Any]:
    """The dataset file's content: pairing and crop keys change pairs without changing fetch's records."""
    return {"data_backend_config": sha256_file(dataset_file(params, workdir))}


def shared_cache_uri(params: Params, workdir: Path, kind: str) -> str | None:
    """The s3:// location the dataset file names for the VAE ("vae") or text-embed ("text") cache."""
    from kontext_core.config import load_datasets

    return load_datasets(dataset_file(params, workdir), base_dir=workdir).shared_cache_uri(kind)  # type: ignore[arg-type]
