"""Lazy, per-tensor reads of a diffusers model folder's safetensors weights, one file or sharded.

The hub stores FLUX.1 Kontext's 12B-parameter transformer as several shards listed in
`diffusion_pytorch_model.safetensors.index.json`; reading it whole needs the whole model in memory.
`LazyWeights` reads only the tensors asked for, opening each shard just for the read (safetensors maps
the file; closing it returns the touched pages), so a caller that asks block by block holds one
block's tensors at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

SINGLE_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"


class WeightsError(ValueError):
    """A weights folder that is missing, damaged or does not match the model it should hold."""


def _header_keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except FileNotFoundError as exc:
        raise WeightsError(f"{path}: missing") from exc
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: unreadable safetensors file ({exc})") from exc


class LazyWeights:
    """Tensor name -> file for a folder holding `diffusion_pytorch_model.safetensors` or an index."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise WeightsError(f"{index}: not a safetensors index (needs a `weight_map` object)") from exc
            if not isinstance(weight_map, dict) or not weight_map:
                raise WeightsError(f"{index}: `weight_map` is empty or not an object")
            self.weight_map: dict[str, Path] = {k: self.folder / v for k, v in weight_map.items()}
            for path in sorted(set(self.weight_map.values())):
                if not path.is_file():
                    raise WeightsError(f"{path}: missing (listed in {index.name})")
        elif (self.folder / SINGLE_FILE).exists():
            single = self.folder / SINGLE_FILE
            self.weight_map = {k: single for k in _header_keys(single)}
        else:
            raise WeightsError(f"{self.folder}: neither {SINGLE_FILE} nor {INDEX_FILE} found")

    def keys(self) -> set[str]:
        return set(self.weight_map)

    def files(self) -> list[Path]:
        return sorted(set(self.weight_map.values()))

    def read(self, names: Iterable[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The named tensors (cast to `dtype` when given), each file opened once for its share."""
        names = list(names)
        missing = [n for n in names if n not in self.weight_map]
        if missing:
            raise WeightsError(f"{self.folder}: tensors missing from the weights: {sorted(missing)[:3]}")
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.weight_map[name], []).append(name)
        out: dict[str, torch.Tensor] = {}
        for path, wanted in sorted(by_file.items()):
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for name in wanted:
                        tensor = handle.get_tensor(name)
                        out[name] = tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
            except (SafetensorError, OSError) as exc:
                raise WeightsError(
                    f"{path}: unreadable safetensors file ({exc}); re-run the stage that wrote it"
                ) from exc
        return out


def component_folder(params: Any, workdir: Path, subfolder: str) -> Path:
    """The local folder of one component (`transformer`, ...) of the base model: inside a local model
    directory, or inside the hub cache's snapshot of the hub id (huggingface_hub's own resolution,
    which honours `HF_HUB_OFFLINE` and `revision`)."""
    from kontext_core.model.source import resolve_model_source

    source = resolve_model_source(params, workdir)
    if Path(source).is_dir():
        folder = Path(source) / subfolder
    else:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(source, revision=params.revision, allow_patterns=[f"{subfolder}/*"])
        folder = Path(snapshot) / subfolder
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder}: no config.json (pretrained_model_name_or_path = {source!r})")
    return folder
