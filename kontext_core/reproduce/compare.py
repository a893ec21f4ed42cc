"""Registered adapter vs rebuilt adapter: sha256 of the weights file, else the largest tensor gap."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from kontext_core.model.adapter_kinds import detect


@dataclass
class AdapterComparison:
    registered_sha256: str
    rebuilt_sha256: str
    max_abs_diff: float | None = None  # None when the bytes are equal
    key_difference: str = ""  # tensors present on one side only

    @property
    def identical(self) -> bool:
        return self.registered_sha256 == self.rebuilt_sha256


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compare_adapters(registered: Path, rebuilt: Path) -> AdapterComparison:
    from safetensors.torch import load_file

    (_, registered_file), (_, rebuilt_file) = detect(registered), detect(rebuilt)
    result = AdapterComparison(sha256_file(registered_file), sha256_file(rebuilt_file))
    if result.identical:
        return result
    old, new = load_file(registered_file), load_file(rebuilt_file)
    only = sorted(set(old) ^ set(new))
    if only:
        result.key_difference = f"{len(only)} tensors on one side only (first: {only[0]})"
    gaps = [
        (old[k].double() - new[k].double()).abs().max().item() if old[k].shape == new[k].shape else float("inf")
        for k in sorted(set(old) & set(new))
    ]
    result.max_abs_diff = max(gaps, default=float("inf"))
    return result
