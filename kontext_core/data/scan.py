"""Metadata scan of image files: header sizes on every core, remembered across runs.

A scan reads each file's header and tail (see `images.probe_header`), never its pixels. Results are
kept in a JSON cache keyed by (path, size, mtime_ns), so a second scan of an unchanged folder only
stats the files. A cold scan of many files is split into chunks over a process pool; a small one
runs in this process, where starting workers would cost more than it saves.
"""

from __future__ import annotations

import contextlib
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
from typing import Any

from PIL import Image

from kontext_core.data.images import ImageReadError, default_max_pixels, probe_header
from kontext_core.fsutil import PendingFile, pending_file
from kontext_core.progress import Progress, progress

log = logging.getLogger(__name__)

# 2: JSON lines, written as the scan goes (1 was one JSON object, built whole).
CACHE_VERSION = 2
# Files a streaming scan takes at a time: its listing is handed over, and answered, in blocks this big.
SCAN_BLOCK = 4096
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
        # The str as given: a Path per file costs a quarter of a small file's probe.
        width, height = probe_header(path, max_pixels)
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


class _Prober:
    """Probes blocks of files in order, on one process pool started at the first block worth it."""

    def __init__(self, max_pixels: int | None, workers: int | None = None) -> None:
        self.max_pixels = max_pixels
        self.workers = workers or cpu_count()
        self.mapper = _CHUNK_MAPPER.get()
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def probe(self, paths: list[str], bar: Progress) -> list[Header]:
        max_pixels = self.max_pixels
        headers: list[Header] = []
        if self.mapper is not None and paths:
            size = -(-len(paths) // MAPPED_CHUNKS)
            chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
            for part in self.mapper(_probe_chunk, chunks, max_pixels):
                headers += part
                bar.update(len(part))
            return headers
        if self.workers <= 1 or len(paths) < SERIAL_BELOW:
            for path in paths:
                headers.append(_probe_one(path, max_pixels))
                bar.update()
            return headers
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=pool_context())
        # Several chunks per worker even out slow files (and give the bar steps of 1/16 or finer).
        size = -(-len(paths) // (self.workers * 8))
        chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
        for part in self._pool.map(_probe_chunk, chunks, [max_pixels] * len(chunks)):
            headers += part
            bar.update(len(part))
        return headers


def load_scan_cache(cache_file: Path | None, max_pixels: int | None) -> dict[str, list]:
    """A scan cache's entries, stored path -> [size, mtime_ns, width, height, reason]; {} when it is
    missing, unreadable or made under another pixel limit."""
    if cache_file is None or not cache_file.exists():
        return {}
    entries: dict[str, list] = {}
    try:
        with open(cache_file, "rb") as fh:
            head = json.loads(fh.readline() or b"{}")
            if not isinstance(head, dict) or head.get("version") != CACHE_VERSION:
                return {}
            if head.get("max_pixels") != max_pixels:
                return {}
            for line in fh:
                stored, *entry = json.loads(line)
                if len(entry) != 5:
                    raise ValueError(f"bad entry {line[:80]!r}")
                entries[stored] = entry
    except (OSError, ValueError, TypeError):
        log.warning("scan cache %s is unreadable; scanning again", cache_file)
        return {}
    return entries


class HeaderScan:
    """Header sizes of files handed over a block at a time, with the (path, size, mtime) cache.

    Use it as a context; `scan(paths)` answers one block, in order. The new cache is written a line
    per file as blocks are answered and, on a clean exit where anything changed, replaces the old one
    (atomically): it then holds exactly the paths scanned. Between blocks only the old cache's entries
    are held, never the answers, so a caller that hands over its listing in blocks stays flat.
    The cache is JSON lines: a head line (version, pixel limit), then `[path, size, mtime_ns, width,
    height, reason]` per file, the path relative to `base` (the project) when under it, so the cache,
    a hashed stage output, does not depend on where the project lives.
    """

    def __init__(
        self,
        cache_file: Path | None = None,
        max_pixels: int | None = -1,
        workers: int | None = None,
        desc: str = "scan",
        base: Path | None = None,
        total: int | None = None,
    ) -> None:
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self.limit = default_max_pixels() if max_pixels == -1 else max_pixels
        self.desc = desc
        self.total = total  # for the progress display
        self.prefix = str(Path(base).resolve()) + os.sep if base is not None else None
        self.cached = 0
        self.scanned = 0
        self._answered = 0
        self._written = 0
        self._old: dict[str, list] = {}
        self._prober = _Prober(self.limit, workers)
        self._bar: Progress | None = None
        self._out: PendingFile | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> HeaderScan:
        self._old = load_scan_cache(self.cache_file, self.limit)
        self._stack.enter_context(self._prober)
        if self.cache_file is not None:
            self._out = self._stack.enter_context(pending_file(self.cache_file))
            self._out.write(json.dumps({"version": CACHE_VERSION, "max_pixels": self.limit}).encode() + b"\n")
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        if self._bar is not None:
            self._bar.close()
        if self._out is not None:
            # Unchanged (every answer from the cache, no path dropped): the old file stays.
            self._out.keep = bool(self.scanned or self._written != len(self._old))
        return self._stack.__exit__(*exc)

    def scan(self, paths: list[str]) -> list[Header]:
        """Header size or unreadable-reason of each of `paths` (used as given: pass resolved paths)."""
        headers: list[Header] = []
        stats: list[tuple[str, int, int] | None] = []
        todo: list[int] = []
        prefix = self.prefix
        for name in paths:
            try:
                stat = os.stat(name)
            except OSError as exc:
                headers.append((None, None, f"I/O error: {exc.strerror or exc}"))
                stats.append(None)
                continue
            stored = name[len(prefix) :] if prefix and name.startswith(prefix) else name
            stats.append((stored, stat.st_size, stat.st_mtime_ns))
            hit = self._old.get(stored)
            if hit is not None and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
                headers.append((hit[2], hit[3], hit[4]))
                self.cached += 1
            else:
                headers.append((None, None, None))
                todo.append(len(headers) - 1)
        answered = len(paths) - len(todo)
        if self._bar is not None:
            self._bar.update(answered)
        if todo:
            if self._bar is None:
                # Shown once there is something to read: a scan the cache answers whole stays silent.
                self._bar = progress(self.total, self.desc, "file", initial=self._answered + answered)
            probed = self._prober.probe([paths[i] for i in todo], self._bar)
            for index, header in zip(todo, probed, strict=True):
                headers[index] = header
            self.scanned += len(todo)
        self._answered += len(paths)
        if self._out is not None:
            lines = [
                json.dumps([*stat, *header]).encode()
                for stat, header in zip(stats, headers, strict=True)
                if stat is not None
            ]
            self._out.write(b"\n".join(lines) + b"\n" if lines else b"")
            self._written += len(lines)
        return headers


def scan_headers(
    paths: list[str] | list[Path],
    cache_file: Path | None = None,
    max_pixels: int | None = -1,
    workers: int | None = None,
    desc: str = "scan",
    base: Path | None = None,
) -> ScanResult:
    """Header size or unreadable-reason of each file, keyed by `str(path)` (see `HeaderScan`).

    Paths are used as given: pass resolved paths. With `cache_file`, results for unchanged files
    (same size and mtime_ns) are reused and the cache is rewritten to hold exactly these paths.
    `max_pixels` as in `images.probe_header`. The answers of every path are held: a caller with a
    large listing hands it to a `HeaderScan` in blocks instead.
    """
    names = [str(path) for path in paths]
    result = ScanResult()
    with HeaderScan(cache_file, max_pixels, workers, desc, base, total=len(names)) as scan:
        for start in range(0, len(names), SCAN_BLOCK):
            block = names[start : start + SCAN_BLOCK]
            result.headers.update(zip(block, scan.scan(block), strict=True))
        result.cached, result.scanned = scan.cached, scan.scanned
    return result


def _walk_files(root: Path) -> list[str]:
    """Posix relative path of every visible file under `root`, sorted; links that leave it are skipped.

    Only the relative paths are kept (a 100,000-image folder's listing is what a digest holds)."""
    files: list[str] = []
    prefix = len(os.path.join(str(root), ""))  # "/" ends in its separator already
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as listing:
                entries = list(listing)
        except OSError:
            continue  # fetch reports the folder; the fingerprint just cannot include it
        for item in entries:
            if item.name.startswith(".") or item.path in ("/proc", "/sys", "/dev"):
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
                files.append(item.path[prefix:].replace(os.sep, "/"))
    files.sort()
    return files


# The digest memo: JSON lines, a head line then `[relative path, size, mtime_ns, sha256]` in path order.
MEMO_VERSION = 2


def _memo_lines(memo_file: Path | None, root: str) -> Iterator[list]:
    """The memo's entries in path order, for the folder `root` only (nothing when it is unusable)."""
    if memo_file is None or not memo_file.exists():
        return
    try:
        with open(memo_file, "rb") as fh:
            head = json.loads(fh.readline() or b"{}")
            if not isinstance(head, dict) or head.get("version") != MEMO_VERSION or head.get("root") != root:
                return
            for line in fh:
                entry = json.loads(line)
                if not isinstance(entry, list) or len(entry) != 4:
                    raise ValueError(f"bad entry {line[:80]!r}")
                yield entry
    except (OSError, ValueError) as exc:
        log.warning("dataset digest memo %s is unreadable (%s); hashing its files again", memo_file, exc)


class MemoDigests:
    """The per-file SHA-256s a `folder_digest` memo holds, looked up in path order by (relative path,
    size, mtime_ns): the memo is read alongside the caller's sorted listing, never held whole. A file
    the memo does not know, or knows at another size or mtime, is hashed now (and counted in `hashed`).
    """

    def __init__(self, memo_file: Path | None, root: Path) -> None:
        self._lines = _memo_lines(memo_file, str(Path(root).resolve()))
        self._entry = next(self._lines, None)
        self.hashed = 0

    def digest(self, rel: str, path: str) -> str:
        from kontext_core.fsutil import sha256_file

        stat = os.stat(path)
        while self._entry is not None and self._entry[0] < rel:
            self._entry = next(self._lines, None)
        entry = self._entry
        if entry is not None and entry[0] == rel and entry[1:3] == [stat.st_size, stat.st_mtime_ns]:
            return entry[3]
        self.hashed += 1
        return sha256_file(Path(path), remember=False)

    def close(self) -> None:
        self._lines.close()


def folder_digest(root: Path, cache_file: Path | None = None) -> str:
    """Content hash of every visible file under `root` (relative paths and SHA-256 of the bytes), or
    of `root` itself when it is a file.

    Each file's SHA-256 is remembered in `cache_file` by (relative path, size, mtime_ns), so
    fingerprinting an unchanged 100,000-image folder in a new process costs a stat per file, not a
    read of every byte. The memo is read alongside the sorted listing and the new one written as it
    goes: neither is held whole.
    """
    import hashlib

    from kontext_core.fsutil import sha256_file

    root = Path(root).resolve()
    # A file (a parquet table) is a listing of one, under its own name.
    base, names = (str(root.parent), [root.name]) if root.is_file() else (str(root), _walk_files(root))
    memo = _memo_lines(cache_file, str(root))
    memo_entry = next(memo, None)
    digest = hashlib.sha256()
    changed = False
    with contextlib.ExitStack() as stack:
        out: PendingFile | None = None
        if cache_file is not None:
            out = stack.enter_context(pending_file(cache_file))
            out.write(json.dumps({"version": MEMO_VERSION, "root": str(root)}).encode() + b"\n")
        for rel in names:
            path = os.path.join(base, rel)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            while memo_entry is not None and memo_entry[0] < rel:
                changed = True  # a file that is gone
                memo_entry = next(memo, None)
            remembered = memo_entry if memo_entry is not None and memo_entry[0] == rel else None
            if remembered is not None:
                memo_entry = next(memo, None)
            if remembered is not None and remembered[1:3] == [stat.st_size, stat.st_mtime_ns]:
                file_hash = remembered[3]
            else:
                file_hash = sha256_file(Path(path), remember=False)
                changed = True
            if out is not None:
                out.write(json.dumps([rel, stat.st_size, stat.st_mtime_ns, file_hash]).encode() + b"\n")
            digest.update(rel.encode())
            digest.update(file_hash.encode())
        if memo_entry is not None:
            changed = True  # files at the end that are gone
        memo.close()
        if out is not None:
            out.keep = changed
    return digest.hexdigest()
