"""Metadata scan of image files: header sizes on every core, remembered across runs.

A scan reads each file's header and tail (see `images.probe_header`), never its pixels. Results are
kept in a JSON cache keyed by (path, size, mtime_ns), so a second scan of an unchanged folder only
stats the files. A cold scan of many files is split into chunks over a process pool; a small one
runs in this process, where starting workers would cost more than it saves.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from kontext_core.data.images import ImageReadError, default_max_pixels, probe_header
from kontext_core.fsutil import atomic_path
from kontext_core.progress import progress

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Below this many uncached files the scan runs serially: starting workers costs about as much.
SERIAL_BELOW = 128
# Chunks handed to a chunk mapper (a Dask cluster): enough to spread over its workers.
MAPPED_CHUNKS = 32

# mapper(fn, chunks, max_pixels) -> each chunk's headers, in order. Set by the fetch stage when it runs
# its per-file work elsewhere (dask.address); None: this process and its own pool.
ChunkMapper = Callable[[Callable[..., list], list[list[str]], int | None], Iterable[list]]
_CHUNK_MAPPER: ContextVar[ChunkMapper | None] = ContextVar("scan_chunk_mapper", default=None)


@contextmanager
def chunk_mapper(mapper: ChunkMapper | None) -> Iterator[None]:
    """Header probes of the scans in this block go through `mapper` (None: the usual local path)."""
    token = _CHUNK_MAPPER.set(mapper)
    try:
        yield
    finally:
        _CHUNK_MAPPER.reset(token)

# (width, height, None) for a usable image, (None, None, reason) for an unreadable one.
Header = tuple[int | None, int | None, str | None]


@dataclass
class ScanResult:
    headers: dict[str, Header] = field(default_factory=dict)
    cached: int = 0
    scanned: int = 0


def _probe_one(path: str, max_pixels: int | None) -> Header:
    try:
        width, height = probe_header(Path(path), max_pixels)
    except ImageReadError as exc:
        return None, None, str(exc)
    return width, height, None


def _probe_chunk(paths: list[str], max_pixels: int | None) -> list[Header]:
    return [_probe_one(path, max_pixels) for path in paths]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pool_context() -> multiprocessing.context.BaseContext:
    """Fork where there is fork: workers start in milliseconds, where spawn/forkserver re-import the
    caller's main module (seconds, and impossible from `python -`). The workers only parse headers with
    PIL; its format plugins are loaded before forking so a child never needs the import machinery."""
    Image.init()
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else methods[0])


def probe_many(
    paths: list[str], max_pixels: int | None, workers: int | None = None, desc: str = "scan"
) -> list[Header]:
    """Probe `paths` in order, over `workers` processes (default: every core) when worth it."""
    workers = workers or cpu_count()
    mapper = _CHUNK_MAPPER.get()
    with progress(len(paths), desc, "file") as bar:
        if mapper is not None and paths:
            size = -(-len(paths) // MAPPED_CHUNKS)
            headers = []
            for part in mapper(_probe_chunk, [paths[i : i + size] for i in range(0, len(paths), size)], max_pixels):
                headers += part
                bar.update(len(part))
            return headers
        if workers <= 1 or len(paths) < SERIAL_BELOW:
            headers = []
            for path in paths:
                headers.append(_probe_one(path, max_pixels))
                bar.update()
            return headers
        # Several chunks per worker even out slow files (and give the bar steps of 1/16 or finer).
        n_chunks = workers * 8
        size = -(-len(paths) // n_chunks)
        chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
        headers = []
        with ProcessPoolExecutor(max_workers=workers, mp_context=pool_context()) as pool:
            for part in pool.map(_probe_chunk, chunks, [max_pixels] * len(chunks)):
                headers += part
                bar.update(len(part))
        return headers


def _load_cache(cache_file: Path | None, max_pixels: int | None) -> dict[str, list]:
    if cache_file is None or not cache_file.exists():
        return {}
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        log.warning("scan cache %s is unreadable; scanning again", cache_file)
        return {}
    if data.get("version") != CACHE_VERSION or data.get("max_pixels") != max_pixels:
        return {}
    return data.get("entries", {})


def _save_cache(cache_file: Path, max_pixels: int | None, entries: dict[str, list]) -> None:
    payload = {"version": CACHE_VERSION, "max_pixels": max_pixels, "entries": entries}
    with atomic_path(cache_file) as tmp:
        tmp.write_text(json.dumps(payload, sort_keys=True, separators=(",", ":")))


def scan_headers(
    paths: list[str] | list[Path],
    cache_file: Path | None = None,
    max_pixels: int | None = -1,
    workers: int | None = None,
    desc: str = "scan",
    base: Path | None = None,
) -> ScanResult:
    """Header size or unreadable-reason of each file, keyed by `str(path)`.

    Paths are used as given: pass resolved paths. With `cache_file`, results for unchanged files
    (same size and mtime_ns) are reused and the cache is rewritten (atomically) to hold exactly these
    paths; a path under `base` (the project) is stored relative to it, so the cache, which is a
    hashed stage output, does not depend on where the project lives. `max_pixels` as in
    `images.probe_header`.
    """
    limit = default_max_pixels() if max_pixels == -1 else max_pixels
    cache = _load_cache(cache_file, limit)
    result = ScanResult()
    entries: dict[str, list] = {}
    todo: list[tuple[str, str, int, int]] = []
    prefix = str(Path(base).resolve()) + os.sep if base is not None else None
    for path in paths:
        name = str(path)
        stored = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        try:
            stat = os.stat(name)
        except OSError as exc:
            result.headers[name] = (None, None, f"I/O error: {exc.strerror or exc}")
            continue
        hit = cache.get(stored)
        if hit is not None and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
            result.headers[name] = (hit[2], hit[3], hit[4])
            entries[stored] = hit
            result.cached += 1
        else:
            todo.append((name, stored, stat.st_size, stat.st_mtime_ns))
    if todo:
        probed = probe_many([name for name, _, _, _ in todo], limit, workers, desc)
        for (name, stored, size, mtime_ns), header in zip(todo, probed, strict=True):
            result.headers[name] = header
            entries[stored] = [size, mtime_ns, *header]
        result.scanned = len(todo)
    if cache_file is not None and (todo or len(entries) != len(cache)):
        _save_cache(cache_file, limit, entries)
    return result


def _walk_files(root: Path) -> list[tuple[str, str]]:
    """(posix relative path, path) of every visible file under `root`; links that leave it are skipped."""
    if root.is_file():
        return [(root.name, str(root))]
    files: list[tuple[str, str]] = []
    prefix = len(str(root)) + 1
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as listing:
                entries = list(listing)
        except OSError:
            continue  # fetch reports the folder; the fingerprint just cannot include it
        for item in entries:
            if item.name.startswith("."):
                continue
            if item.is_symlink():
                try:
                    real = os.path.realpath(item.path, strict=True)
                    if not (real == str(root) or real.startswith(str(root) + os.sep)) or item.is_dir():
                        continue
                except OSError:  # a loop or a dangling link: fetch reports it; nothing to hash
                    continue
            if item.is_dir():
                stack.append(item.path)
            elif item.is_file():
                files.append((item.path[prefix:].replace(os.sep, "/"), item.path))
    files.sort()
    return files


def folder_digest(root: Path, cache_file: Path | None = None) -> str:
    """Content hash of every visible file under `root` (relative paths and SHA-256 of the bytes), or
    of `root` itself when it is a file.

    Each file's SHA-256 is remembered in `cache_file` by (path, size, mtime_ns), so fingerprinting an
    unchanged 100,000-image folder in a new process costs a stat per file, not a read of every byte.
    """
    import hashlib

    from kontext_core.fsutil import sha256_file

    root = Path(root).resolve()
    cached: dict[str, list] = {}
    if cache_file is not None and cache_file.exists():
        try:
            data = json.loads(cache_file.read_text())
            cached = data.get("entries", {}) if data.get("version") == CACHE_VERSION else {}
        except (OSError, ValueError):
            cached = {}
    entries: dict[str, list] = {}
    digest = hashlib.sha256()
    changed = False
    for rel, path in _walk_files(root):
        try:
            stat = os.stat(path)
        except OSError:
            continue
        hit = cached.get(path)
        if hit is not None and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
            file_hash = hit[2]
        else:
            file_hash = sha256_file(Path(path))
            changed = True
        entries[path] = [stat.st_size, stat.st_mtime_ns, file_hash]
        digest.update(rel.encode())
        digest.update(file_hash.encode())
    if cache_file is not None and (changed or len(entries) != len(cached)):
        with atomic_path(cache_file) as tmp:
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": entries}, separators=(",", ":")))
    return digest.hexdigest()
