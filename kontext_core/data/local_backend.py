"""`type: local`: images in a folder tree (kontext_core.data.local), referenced by file path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from kontext_core.config import ConfigError, DatasetEntry
from kontext_core.data.backend import DatasetBackend
from kontext_core.data.images import image_size, open_rgb
from kontext_core.data.local import iter_local_records, refused_root, resolve
from kontext_core.data.records import Problem, Record, split_records
from kontext_core.data.scan import folder_digest
from kontext_core.fsutil import sha256_file


def resolve_ref(ref: str, workdir: Path) -> Path:
    path = Path(ref)
    return path if path.is_absolute() else Path(workdir) / path


class LocalBackend(DatasetBackend):
    type = "local"

    def check(self, entry: DatasetEntry, workdir: Path) -> list[str]:
        if not entry.instance_data_dir:
            return [f"dataset '{entry.id}': type 'local' needs 'instance_data_dir'"]
        if not resolve(entry.instance_data_dir, workdir).is_dir():
            return [f"dataset '{entry.id}': instance_data_dir '{entry.instance_data_dir}' is not a folder"]
        if reason := refused_root(resolve(entry.instance_data_dir, workdir).resolve(), workdir):
            return [f"dataset '{entry.id}': instance_data_dir {entry.instance_data_dir!r}: {reason}; refused"]
        return []

    def local_location(self, entry: DatasetEntry) -> str | None:
        return entry.instance_data_dir

    def records(
        self, entry: DatasetEntry, workdir: Path, scan_cache_dir: Path | None
    ) -> tuple[list[Record], list[Problem]]:
        return split_records(self.stream(entry, workdir, scan_cache_dir))

    def stream(self, entry: DatasetEntry, workdir: Path, scan_cache_dir: Path | None) -> Iterator[Record | Problem]:
        cache = scan_cache_dir / f"{entry.id}.json" if scan_cache_dir is not None else None
        return iter_local_records(entry, workdir, cache)

    def fingerprint(self, entry: DatasetEntry, workdir: Path, memo_file: Path) -> Any:
        root = resolve(entry.instance_data_dir or "", workdir)
        # Refused before the digest reads a byte: hashing `/` read the whole machine, /proc included.
        if root.exists() and (reason := refused_root(root.resolve(), workdir)):
            raise ConfigError(f"dataset '{entry.id}': instance_data_dir {entry.instance_data_dir!r}: {reason}; refused")
        return folder_digest(root, memo_file) if root.exists() else "missing"

    def open_ref(self, ref: str, workdir: Path) -> Image.Image:
        return open_rgb(resolve_ref(ref, workdir))

    def ref_digest(self, ref: str, workdir: Path) -> str:
        return sha256_file(resolve_ref(ref, workdir))

    def ref_size(self, ref: str, workdir: Path) -> tuple[int, int]:
        return image_size(resolve_ref(ref, workdir))
