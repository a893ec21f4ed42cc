"""The dataset file as the fetch and pair stages read it: checked, and fingerprinted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kontext_core.config import DatasetConfig, Params
from kontext_core.fsutil import sha256_file


def dataset_file(params: Params, workdir: Path) -> Path:
    path = Path(params.data_backend_config)
    return path if path.is_absolute() else workdir / path


def load_checked_datasets(params: Params, workdir: Path) -> DatasetConfig:
    """The dataset file the params name, checked on its own, against the params and by its backends."""
    from kontext_core.config import check_datasets_with_params, load_datasets
    from kontext_core.data.backends import check_entries

    datasets = load_datasets(dataset_file(params, workdir), base_dir=workdir)
    check_datasets_with_params(params, datasets, "params")
    check_entries(datasets, workdir)
    return datasets


def dataset_file_input(params: Params, workdir: Path) -> dict[str, Any]:
    """The dataset file's content: pairing and crop keys change pairs without changing fetch's records."""
    return {"data_backend_config": sha256_file(dataset_file(params, workdir))}
