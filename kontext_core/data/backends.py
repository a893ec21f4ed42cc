"""The dataset backends, found by an entry's `type` or by the prefix of an image reference.

Adding a backend is one module with a `DatasetBackend` subclass (kontext_core.data.backend) plus one
`register_backend` line below; stages, pairing and the caches only ever ask this registry.
"""

from __future__ import annotations

from pathlib import Path

from kontext_core.config import ConfigError, DatasetConfig, DatasetEntry
from kontext_core.config.datasets import register_backend_options
from kontext_core.data.backend import DatasetBackend
from kontext_core.data.hf_backend import HuggingFaceBackend
from kontext_core.data.local_backend import LocalBackend
from kontext_core.data.s3_backend import S3Backend

BACKENDS: dict[str, DatasetBackend] = {}


def register_backend(backend: DatasetBackend) -> None:
    """Make `type: <backend.type>` loadable: its stages' calls, and its own keys (`backend.options`)."""
    BACKENDS[backend.type] = backend
    if backend.options is not None:
        register_backend_options(backend.type, backend.options)


def backend_for(entry: DatasetEntry) -> DatasetBackend:
    try:
        return BACKENDS[entry.type]
    except KeyError:
        raise ConfigError(
            f"dataset '{entry.id}': type = {entry.type!r}: unknown backend; allowed: {', '.join(BACKENDS)}"
        ) from None


def backend_for_ref(ref: str) -> DatasetBackend:
    """The backend that wrote an image reference: by its prefix, else the one of plain file paths."""
    fallback = None
    for backend in BACKENDS.values():
        if backend.ref_prefix is None:
            fallback = fallback or backend
        elif ref.startswith(backend.ref_prefix):
            return backend
    if fallback is None:
        raise ValueError(f"{ref}: no backend reads this reference")
    return fallback


def entry_problems(datasets: DatasetConfig, workdir: Path) -> list[str]:
    """Every backend-specific problem of the enabled entries (one line each), unknown types included."""
    problems: list[str] = []
    for entry in datasets.enabled():
        if entry.type not in BACKENDS:
            problems.append(
                f"dataset '{entry.id}': type = {entry.type!r}: unknown backend; allowed: {', '.join(BACKENDS)}"
            )
        elif entry.dataset_type != "text_embeds":
            problems += BACKENDS[entry.type].check(entry, workdir)
    return problems


def prepare_backends(datasets: DatasetConfig) -> None:
    """Let each backend learn from its enabled entries what reading its references needs."""
    for name, backend in BACKENDS.items():
        backend.prepare([e for e in datasets.enabled() if e.type == name])


def backends_state() -> dict[str, object]:
    """What the backends learnt in `prepare`, to hand to worker processes (in memory only)."""
    return {name: backend.state() for name, backend in BACKENDS.items()}


def restore_backends_state(state: dict[str, object]) -> None:
    """A worker process's initializer: take the parent's `backends_state()`."""
    for name, value in state.items():
        if name in BACKENDS:
            BACKENDS[name].restore(value)


register_backend(LocalBackend())
register_backend(HuggingFaceBackend())
register_backend(S3Backend())
