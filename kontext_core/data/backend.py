"""The interface every dataset backend implements; the registry (kontext_core.data.backends) finds
one by the entry's `type` and, for an image reference kept in a table, by the reference's prefix."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from kontext_core.config import DatasetEntry
from kontext_core.config.base import Strict
from kontext_core.data.images import ImageReadError
from kontext_core.data.records import Problem, Record


def changed_since_recorded(ref: str) -> str:
    return (
        f"{ref}: its content is not the content recorded for it (changed since fetch or degrade read it); "
        "run the pipeline again from fetch"
    )


class DatasetBackend(ABC):
    type: str  # the entry's `type` value that selects it
    # Prefix of the image references it writes into tables ("hf:"); None: plain file paths.
    ref_prefix: str | None = None
    # The backend's own entry keys as a config model (kontext_core.config.base.Strict), written beside
    # the shared keys in the dataset file; registering the backend makes the loader accept and check them.
    options: type[Strict] | None = None

    def options_of(self, entry: DatasetEntry) -> Any:
        """The entry's options as this backend's model (defaults where it sets none).

        An entry read before the backend was registered has its keys among the SimpleTuner extras:
        they are validated here then."""
        if self.options is None:
            return None
        if isinstance(entry.backend_options, self.options):
            return entry.backend_options
        given = {k: v for k, v in entry.simpletuner_extras.items() if k in self.options.model_fields}
        if isinstance(entry.backend_options, dict):
            given.update(entry.backend_options)
        return self.options.model_validate(given)

    def check(self, entry: DatasetEntry, workdir: Path) -> list[str]:
        """Problems with the entry that need no image data (one line each)."""
        return []

    @abstractmethod
    def records(
        self, entry: DatasetEntry, workdir: Path, scan_cache_dir: Path | None
    ) -> tuple[list[Record], list[Problem]]:
        """One record per usable image; unreadable inputs become problems, never records."""

    def stream(
        self, entry: DatasetEntry, workdir: Path, scan_cache_dir: Path | None, memo_file: Path | None = None
    ) -> Iterator[Record | Problem]:
        """The same records (in key order) and problems, handed on one at a time: what fetch reads.

        `memo_file` is the one `fingerprint` was just given, for a backend whose records take their
        digests from what the fingerprint hashed. This default builds both lists first; a backend
        whose listings can be large (local folders) streams instead, so fetch's memory stays flat
        however many images a dataset has."""
        records, problems = self.records(entry, workdir, scan_cache_dir)
        yield from problems
        yield from records

    @abstractmethod
    def fingerprint(self, entry: DatasetEntry, workdir: Path, memo_file: Path) -> Any:
        """What identifies the dataset's content for the fetch stage, without downloading it."""

    def local_location(self, entry: DatasetEntry) -> str | None:
        """The path in the entry that may name local files its fingerprint reads (DVC deps), if any.

        A backend with a `ref_prefix` may also take hub ids here; only existing paths become deps.
        """
        return None

    def stored_ref(self, ref: str, to_stored: Callable[[Path], str]) -> str:
        """The reference as tables keep it (project-relative for files inside the project)."""
        return ref if self.ref_prefix else to_stored(Path(ref))

    def prepare(self, entries: list[DatasetEntry]) -> None:
        """Learn what reading this backend's references needs (a store's endpoint and keys) from its
        enabled entries; called before a stage runs, since references alone do not carry it."""
        return None

    def state(self) -> Any:
        """What `prepare` learnt, for a worker process (kept in memory, never written)."""
        return None

    def restore(self, state: Any) -> None:
        """Take a parent's `state()` in a worker process."""
        return None

    @abstractmethod
    def open_ref(self, ref: str, workdir: Path) -> Image.Image:
        """RGB pixels of a reference this backend wrote, or ImageReadError naming it."""

    @abstractmethod
    def ref_digest(self, ref: str, workdir: Path) -> str:
        """A content hash of the image behind the reference (cache keys use it, never the path).

        The same value a record's `digest` holds where the backend fills it at fetch."""

    def open_verified(self, ref: str, workdir: Path, digest: str) -> Image.Image:
        """`open_ref`, refusing an image that is no longer the one whose `digest` a table recorded
        (a stage about to store pixels under a key made from that digest)."""
        if self.ref_digest(ref, workdir) != digest:
            raise ImageReadError(changed_since_recorded(ref))
        return self.open_ref(ref, workdir)

    @abstractmethod
    def ref_size(self, ref: str, workdir: Path) -> tuple[int, int]:
        """(width, height) with EXIF orientation applied, from the header where possible."""
