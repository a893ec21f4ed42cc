"""Lazy, per-tensor reads of a diffusers model folder's safetensors weights, one file or sharded.

The hub stores FLUX.1 Kontext's 12B-parameter transformer as several shards listed in
`diffusion_pytorch_model.safetensors.index.json`; reading it whole needs the whole model in memory.
`LazyWeights` reads only the tensors asked for, each straight from its byte range in the file into its
own buffer (plain reads, not a memory map: mapped pages that were touched count as the process's
memory until the map closes), so a caller that asks block by block holds one block's tensors at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

SINGLE_FILE = "diffusion_pytorch_model.safetensors"
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"


class WeightsError(ValueError):
    """A weights folder that is missing, damaged or does not match the model it should hold."""


def _header(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """The tensors' entries of a safetensors file (dtype, shape, data_offsets) and where its data begins."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if length <= 0 or length > size - 8:
                raise ValueError(f"header length {length} beyond the file's {size} bytes (truncated?)")
            header = json.loads(fh.read(length))
    except FileNotFoundError as exc:
        raise WeightsError(f"{path}: missing") from exc
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable safetensors file ({exc})") from exc
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    start = 8 + length
    for name, entry in entries.items():
        try:
            begin, end = entry["data_offsets"]
            dtype = _DTYPES[entry["dtype"]]
            count = math.prod(entry["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"{path}: tensor {name!r} has a malformed header entry ({exc})") from exc
        if end - begin != count * dtype.itemsize or start + end > size:
            raise WeightsError(f"{path}: tensor {name!r} lies outside the file or has the wrong size (truncated?)")
    return entries, start


def _read_tensor(fh: Any, entry: dict[str, Any], start: int) -> torch.Tensor:
    begin, end = entry["data_offsets"]
    buffer = torch.empty(end - begin, dtype=torch.uint8)
    fh.seek(start + begin)
    if end > begin and fh.readinto(buffer.numpy()) != end - begin:
        raise OSError(f"short read at byte {start + begin}")
    return buffer.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])


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
            self.weight_map = {k: single for k in _header(single)[0]}
        else:
            raise WeightsError(f"{self.folder}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
        self._headers: dict[Path, tuple[dict[str, dict[str, Any]], int]] = {}

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
            if path not in self._headers:
                self._headers[path] = _header(path)
            entries, start = self._headers[path]
            absent = [n for n in wanted if n not in entries]
            if absent:
                raise WeightsError(f"{path}: does not hold {sorted(absent)[:3]} (its index says it does)")
            try:
                with open(path, "rb") as fh:
                    for name in wanted:
                        tensor = _read_tensor(fh, entries[name], start)
                        out[name] = tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
            except OSError as exc:
                raise WeightsError(f"{path}: unreadable ({exc}); re-run the stage that wrote it") from exc
        return out


def component_folder(params: Any, workdir: Path, subfolder: str) -> Path:
    """The local folder of one component (`transformer`, ...) of the base model: inside a local model
    directory, or inside the hub cache's snapshot of the hub id (huggingface_hub's own resolution,
    which honours `HF_HUB_OFFLINE` and `revision`)."""
    from kontext_core.model.source import model_location

    where = model_location(params, workdir)
    source = where.source
    if Path(source).is_dir():
        folder = Path(source) / subfolder
    else:
        # A hub id the cache does not hold yet: download the component at the commit it resolved to.
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(source, revision=where.revision, allow_patterns=[f"{subfolder}/*"])
        folder = Path(snapshot) / subfolder
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder}: no config.json (pretrained_model_name_or_path = {source!r})")
    return folder
