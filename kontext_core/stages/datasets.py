"""The dataset file as the data stages read it: checked once per stage, and fingerprinted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kontext_core.config import DatasetConfig, Params

# Imported with this module, so the backends' own keys (their options models) are registered before
# any dataset file is read through it: `kontext config check` included.
from kontext_core.data.backends import BACKENDS
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


# Checked dataset files by (file as it is now, project, params, registered kinds): a stage loads and
# validates its dataset file once, however many of its parts (prepare, fingerprint, body) ask.
_LOADED: dict[tuple[Any, ...], DatasetConfig] = {}
_LOADED_MAX = 8


def _load_key(params: Params, workdir: Path) -> tuple[Any, ...] | None:
    from kontext_core.model.adapter_kinds import ADAPTER_KINDS

    path = dataset_file(params, workdir)
    try:
        stat = path.stat()
    except OSError:
        return None  # not there: the load below says so
    # Size, mtime, ctime and inode: any write to the file gives another key (as the scan cache trusts).
    identity = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    return identity, str(Path(workdir).resolve()), params.model_dump_json(), tuple(BACKENDS), tuple(ADAPTER_KINDS)


def load_checked_datasets(params: Params, workdir: Path) -> DatasetConfig:
    """The dataset file the params name, with the params' defaults, checked together and by the backends.

    Loaded and validated once while the file, the params and the project stay the same (the stage's
    preparation, its fingerprint and its body share it): treat the answer as read-only."""
    from kontext_core.config import load_datasets

    key = _load_key(params, workdir)
    if key is not None and key in _LOADED:
        return _LOADED[key]
    datasets = load_datasets(
        dataset_file(params, workdir), base_dir=workdir, params=params, extra_checks=registered_kind_problems
    )
    if key is not None:
        while len(_LOADED) >= _LOADED_MAX:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = datasets
    return datasets


def stage_datasets(params: Params, workdir: Path) -> DatasetConfig:
    """The checked dataset file (`load_checked_datasets`); where it has problems, the file loaded
    without the checks across entries and files, for the callers that only need its entries (a
    fingerprint, a cache location, the backends' preparation): the stage that checks reports them."""
    from kontext_core.config import ConfigError, load_datasets

    try:
        return load_checked_datasets(params, workdir)
    except ConfigError:
        return load_datasets(dataset_file(params, workdir), base_dir=workdir)


def dataset_file_input(params: Params, workdir: Path) -> dict[str, Any]:
    """The dataset file's content: pairing and crop keys change pairs without changing fetch's records."""
    return {"data_backend_config": sha256_file(dataset_file(params, workdir))}


def shared_cache_uri(params: Params, workdir: Path, kind: str) -> str | None:
    """The s3:// location the dataset file names for the VAE ("vae") or text-embed ("text") cache."""
    return stage_datasets(params, workdir).shared_cache_uri(kind)  # type: ignore[arg-type]
