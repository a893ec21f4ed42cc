"""Atomic file and directory writes, and content hashing.

Every output is written under a temporary name in the same directory and renamed into place, so
a killed process leaves either the old output or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temp file path beside `dest`; on success it replaces `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temp directory beside `dest`; on success it replaces `dest` whole."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(dest: Path, obj: Any) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(dest: Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Fingerprints are computed by the flow, the task cache key and the stage itself: remember each
# file's hash for as long as its size and mtime are unchanged, so a dataset is read once per process.
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _FILE_HASHES:
        return _FILE_HASHES[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


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
