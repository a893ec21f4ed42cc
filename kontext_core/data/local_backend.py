"""`type: local`: images in a folder tree (kontext_core.data.local), referenced by file path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from kontext_core.config import ConfigError, DatasetEntry
from kontext_core.data.backend import DatasetBackend, changed_since_recorded
from kontext_core.data.images import ImageReadError, image_size, open_rgb
from kontext_core.data.local import iter_local_records, refused_root, resolve
from kontext_core.data.records import Problem, Record, split_records
from kontext_core.data.scan import MemoDigests, folder_digest
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

    def stream(
        self, entry: DatasetEntry, workdir: Path, scan_cache_dir: Path | None, memo_file: Path | None = None
    ) -> Iterator[Record | Problem]:
        """Records carry their image's SHA-256 from the fingerprint's memo (`memo_file`: the folder
        digest's per-file hashes by path, size and mtime), so an unchanged image is hashed once; a
        file the memo does not know as it is now is hashed here."""
        cache = scan_cache_dir / f"{entry.id}.json" if scan_cache_dir is not None else None
        memo = MemoDigests(memo_file, resolve(entry.instance_data_dir or "", workdir))
        try:
            for item in iter_local_records(entry, workdir, cache):
                if isinstance(item, Record):
                    item.digest = memo.digest(item.key, item.image)
                yield item
        finally:
            memo.close()

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

    def open_verified(self, ref: str, workdir: Path, digest: str) -> Image.Image:
        # One read: the bytes checked are the bytes decoded.
        from kontext_core.fsutil import sha256_image_bytes

        path = resolve_ref(ref, workdir)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageReadError(f"{path}: I/O error: {exc.strerror or exc}") from exc
        if sha256_image_bytes(data) != digest:
            raise ImageReadError(changed_since_recorded(ref))
        return open_rgb(data, name=str(path))

    def ref_size(self, ref: str, workdir: Path) -> tuple[int, int]:
        return image_size(resolve_ref(ref, workdir))
