"""A content-addressed store of safetensors files, written atomically.

A file's name is the hash of everything that determines its content, so an entry is either
absent or complete and correct; re-running a cache stage only computes the missing entries.
`has()` does not trust a name alone: an entry whose file is damaged (truncated, header broken) is
logged, removed and reported absent, so the next cache run computes it again.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kontext_core.fsutil import atomic_path, fsync_path, safetensors_problem, sha256_json

log = logging.getLogger(__name__)


class TensorStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # Folders whose entries' renames still need their fsync (inside `deferred_dir_sync`).
        self._unsynced_dirs: set[Path] | None = None

    @contextlib.contextmanager
    def deferred_dir_sync(self) -> Iterator[None]:
        """Within it, `put` syncs each entry's bytes before renaming it into place as always, but syncs
        each shard folder once at the end instead of after every entry (the folder sync was ~90 % of
        a small entry's write time). A crash before the end loses at most some names: those entries
        are absent, and the next run computes them again."""
        if self._unsynced_dirs is not None:  # nested: the outer one syncs
            yield
            return
        self._unsynced_dirs = set()
        try:
            yield
        finally:
            dirs, self._unsynced_dirs = self._unsynced_dirs, None
            for folder in sorted(dirs):
                fsync_path(folder)

    @staticmethod
    def key(**parts: object) -> str:
        return sha256_json(parts)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        """Whether the entry exists and is structurally whole; a damaged one is removed."""
        path = self.path(key)
        if not path.exists():
            return False
        problem = safetensors_problem(path)
        if problem is None:
            return True
        log.warning("damaged cache entry %s (%s): removed, it is computed again", path, problem)
        path.unlink(missing_ok=True)
        return False

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> Path:
        dest = self.path(key)
        deferred = self._unsynced_dirs is not None
        with atomic_path(dest, sync_dir=not deferred) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        if deferred and self._unsynced_dirs is not None:
            self._unsynced_dirs.add(dest.parent)
        return dest

    def get(self, key: str) -> dict[str, torch.Tensor]:
        path = self.path(key)
        try:
            return load_file(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"cache entry {path} is missing: run its cache stage again") from None
        except Exception as exc:  # safetensors' own error names no file
            raise RuntimeError(
                f"cache entry {path} is damaged ({safetensors_problem(path) or exc}): "
                "run `kontext verify`, then the cache stage again"
            ) from None


class BackgroundWriter:
    """Puts into a store on one thread, so a cache stage's next batch encodes while the last one is
    written and synced (file writes and fsync wait on the disk, not the CPU). At most `backlog`
    batches wait; the first error is raised on the caller's next call or on leaving the block, and
    leaving the block waits for every write."""

    def __init__(self, store: Any, backlog: int = 4) -> None:
        self.store = store
        self.backlog = backlog
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()

    def __enter__(self) -> BackgroundWriter:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer")
        return self

    def put_many(self, entries: list[tuple[str, dict[str, torch.Tensor]]]) -> None:
        assert self._pool is not None, "use BackgroundWriter as a context manager"
        self._pending.append(self._pool.submit(self._write, entries))
        while len(self._pending) > self.backlog or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()

    def _write(self, entries: list[tuple[str, dict[str, torch.Tensor]]]) -> None:
        for key, tensors in entries:
            self.store.put(key, tensors)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        assert self._pool is not None
        try:
            while self._pending and exc_type is None:  # leaving on an error: that error is the one raised
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
