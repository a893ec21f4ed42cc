"""A content-addressed store of safetensors files, written atomically.

A file's name is the hash of everything that determines its content, so an entry is either
absent or complete and correct; re-running a cache stage only computes the missing entries.
`has()` does not trust a name alone: an entry whose file is damaged (truncated, header broken) is
logged, removed and reported absent, so the next cache run computes it again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kontext_core.fsutil import atomic_path, safetensors_problem, sha256_json

log = logging.getLogger(__name__)


class TensorStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

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
        with atomic_path(dest) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
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
