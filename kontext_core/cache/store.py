"""A content-addressed store of safetensors files, written atomically.

A file's name is the hash of everything that determines its content, so an entry is either
absent or complete and correct; re-running a cache stage only computes the missing entries.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kontext_core.fsutil import atomic_path, sha256_json


class TensorStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(**parts: object) -> str:
        return sha256_json(parts)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> Path:
        dest = self.path(key)
        with atomic_path(dest) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        return dest

    def get(self, key: str) -> dict[str, torch.Tensor]:
        return load_file(self.path(key))
