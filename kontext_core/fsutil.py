"""Atomic file and directory writes, and content hashing.

Every output is written under a temporary name in the same directory, synced to disk and renamed
into place, so a killed process (or a power loss) leaves either the old output or the new one, never
half of one. Files get mode 0644 and folders 0755 (less what the umask takes away), as `open` and
`mkdir` would give them: the temp names come from mkstemp/mkdtemp, which create 0600/0700.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from stat import S_ISLNK
from typing import Any, BinaryIO


def umask() -> int:
    """The process umask, read without changing it (Linux: /proc; elsewhere set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder: nothing more can be done there
        pass
    finally:
        os.close(fd)


def _syncfs() -> Any:
    """libc's syncfs (Linux), or None where the C library has none."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _syncfs()


def sync_open_files(fds: list[int]) -> None:
    """Flush the data of these open files to disk.

    Several files on one filesystem are flushed by one `syncfs` (Linux): one journal commit instead
    of one per file, which was most of a small cache entry's write time. Elsewhere, or when the files
    span filesystems, each is fsynced."""
    if len(fds) > 1 and _SYNCFS is not None and len({os.fstat(fd).st_dev for fd in fds}) == 1:
        if _SYNCFS(fds[0]) == 0:
            return
    for fd in fds:
        os.fsync(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (one call may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_tree(path: Path) -> None:
    """fsync every file under `path` (and each folder's entries), before the tree is renamed into place."""
    path = Path(path)
    if path.is_file():
        fsync_path(path)
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            if not file.is_symlink():
                fsync_path(file)
        fsync_path(Path(root))


def _fix_modes(path: Path) -> None:
    """0644 files / 0755 folders (umask respected) for everything a temp name created 0600/0700."""
    if path.is_symlink():
        return
    if path.is_file():
        os.chmod(path, file_mode())
        return
    os.chmod(path, dir_mode())
    for root, dirs, files in os.walk(path):
        for name in dirs:
            if not (Path(root) / name).is_symlink():
                os.chmod(Path(root) / name, dir_mode())
        for name in files:
            file = Path(root) / name
            # Only what a temp name made private; a file the writer chose a mode for keeps it.
            if not file.is_symlink() and file.stat().st_mode & 0o777 == 0o600:
                os.chmod(file, file_mode())


@contextlib.contextmanager
def atomic_path(dest: Path, sync_dir: bool = True) -> Iterator[Path]:
    """Yield a temp file path beside `dest`; on success it is synced and replaces `dest`.

    `sync_dir=False` leaves the folder's fsync (which makes the rename itself durable) to the caller,
    who syncs each folder once after many files (`TensorStore.deferred_dir_sync`): the content is
    still synced before its name appears, so a crash loses at most the name, never trusted bytes."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, file_mode())
            fsync_path(tmp)
        os.replace(tmp, dest)
        if sync_dir:
            fsync_path(dest.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


class PendingFile:
    """A file being written by `pending_file`: `write` bytes; `keep = False` drops it at the end."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.keep = True

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()


@contextlib.contextmanager
def pending_file(dest: Path) -> Iterator[PendingFile]:
    """A binary file written beside `dest` as the caller goes; on a clean exit it is synced and
    replaces `dest`, unless the caller set `keep = False` (nothing changed). On an error, or when not
    kept, it is removed and `dest` stays as it was."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            pending = PendingFile(fh)
            yield pending
        if pending.keep:
            os.chmod(tmp, file_mode())
            fsync_path(tmp)
            os.replace(tmp, dest)
            fsync_path(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temp directory beside `dest`; on success it replaces `dest` whole."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        if tmp.exists():
            _fix_modes(tmp)
            fsync_tree(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        fsync_path(dest.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(dest: Path, obj: Any) -> None:
    """`obj` as indented JSON with sorted keys, streamed to the file: the bytes of one `json.dumps`,
    without the whole text in memory (a 100,000-image records file is tens of MB of it)."""
    with atomic_path(dest) as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")


def write_json_array(dest: Path, items: Iterable[Any]) -> int:
    """Write `items` as a JSON array, one element at a time; returns how many were written.

    The bytes are those `write_json(dest, list(items))` writes (indent 2, sorted keys), but only one
    element is held as text at a time: a table of a million rows is written without building it whole.
    """
    count = 0
    with atomic_path(dest) as tmp, open(tmp, "w") as fh:
        for item in items:
            text = json.dumps(item, indent=2, sort_keys=True, default=str)
            # JSON strings escape their newlines, so every line break here is structure: indent by one level.
            fh.write(("[\n  " if count == 0 else ",\n  ") + text.replace("\n", "\n  "))
            count += 1
        fh.write("[]\n" if count == 0 else "\n]\n")
    return count


def write_text(dest: Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Fingerprints are computed by the flow, the task cache key and the stage itself: remember each
# file's hash for as long as its size and mtime are unchanged, so a dataset is read once per process.
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


@functools.lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def _real_path(path: Path) -> tuple[str, os.stat_result]:
    """The file's symlink-free absolute path and its stat. A cache stage hashes thousands of files in
    a few folders: each folder is resolved once, not each file's every path component (`realpath`
    was a third of a cached cache_vae run)."""
    folder, name = os.path.split(os.path.abspath(path))
    real = os.path.join(_real_folder(folder), name)
    stat = os.lstat(real)
    if S_ISLNK(stat.st_mode):
        real = os.path.realpath(real)
        stat = os.stat(real)
    return real, stat


def sha256_file(path: Path, chunk: int = 1 << 20, remember: bool = True) -> str:
    """SHA-256 of the file's bytes, remembered for this process by (real path, size, mtime_ns).

    `remember=False` for a caller that keeps its own memo on disk (a dataset's digest): a 100,000-image
    folder would otherwise hold tens of MB of hashes here for as long as the process lives."""
    real, stat = _real_path(path)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key in _FILE_HASHES:
        return _FILE_HASHES[key]
    hexdigest = read_sha256(path, chunk)
    if remember:
        _FILE_HASHES[key] = hexdigest
    return hexdigest


def read_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read now: the one place a file is read to be hashed (tests count
    the calls to see what a stage hashes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_image_bytes(data: bytes | memoryview) -> str:
    """SHA-256 of an image's encoded bytes already in memory (a dataset row's image cell, a file read
    to be decoded): the one place they are hashed (tests count it beside `read_sha256`)."""
    return hashlib.sha256(data).hexdigest()


def forget_file_hashes(path: Path) -> None:
    """Drop remembered hashes under `path`, so the next hash reads the bytes (a verify)."""
    prefix = str(Path(path).resolve())
    for key in [k for k in _FILE_HASHES if k[0] == prefix or k[0].startswith(prefix + os.sep)]:
        del _FILE_HASHES[key]


def _file_identity(path: Path, large_file_bytes: int | None) -> str:
    # Multi-GB checkpoints are identified by size and mtime: hashing 24 GB on every run costs minutes.
    stat = path.stat()
    if large_file_bytes is not None and stat.st_size > large_file_bytes:
        return f"size={stat.st_size},mtime_ns={stat.st_mtime_ns}"
    return sha256_file(path)


def sha256_tree(path: Path, large_file_bytes: int | None = None) -> str:
    """Hash of a file, or of a directory's relative paths and file contents (hidden files skipped)."""
    path = Path(path)
    if path.is_file():
        return _file_identity(path, large_file_bytes)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        digest.update(str(rel.as_posix()).encode())
        digest.update(_file_identity(file, large_file_bytes).encode())
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def canonicalize_safetensors_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys.

    safetensors writes `__metadata__` from a hash map, so the same tensors and metadata give
    different bytes from one process to the next; sorting makes equal adapters byte-identical.
    """
    path = Path(path)
    with open(path, "r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            return
        fh.seek(8)
        fh.write(text + b" " * (size - len(text)))


def safetensors_problem(path: Path) -> str | None:
    """A cheap structural check of a safetensors file: its header parses and the file is exactly as
    long as the header says (a truncated or padded file fails). None when it looks whole."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return f"{size} bytes: too short for a safetensors header"
            header_len = int.from_bytes(raw, "little")
            if header_len > size - 8 or header_len > 100_000_000:
                return f"header length {header_len} beyond the file's {size} bytes (truncated?)"
            header = json.loads(fh.read(header_len))
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as exc:
        return f"unreadable safetensors header ({type(exc).__name__})"
    if not isinstance(header, dict):
        return "safetensors header is not an object"
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            return f"safetensors entry {key!r} has no data offsets"
    expected = 8 + header_len + end
    if size != expected:
        return f"{size} bytes where its header says {expected} (truncated?)" if size < expected else (
            f"{size} bytes where its header says {expected}"
        )
    return None


# Failures of the machine, not of the code: each is one line naming what failed and where.
STORAGE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}
# safetensors' Rust writer reports the OS error in its message only (no errno, no file name).
_RUST_IO_KINDS = {
    "StorageFull": errno.ENOSPC,
    "No space left on device": errno.ENOSPC,
    "PermissionDenied": errno.EACCES,
    "ReadOnlyFilesystem": errno.EROFS,
}


class StorageError(RuntimeError):
    """An expected failure of the file system (disk full, permission denied), as one line."""


def storage_failure(exc: BaseException) -> tuple[str, str | None] | None:
    """(what failed, the file it names or None) when `exc`, or an error it was raised from, is a
    storage failure; None otherwise."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            filename = current.filename if isinstance(current.filename, str) else None
            return f"{STORAGE_ERRNOS[current.errno]} ({current.strerror})", filename
        if type(current).__name__ == "SafetensorError":
            for marker, code in _RUST_IO_KINDS.items():
                if marker in str(current):
                    return f"{STORAGE_ERRNOS[code]} ({os.strerror(code)})", None
        current = current.__cause__ or current.__context__
    return None
