"""`type: huggingface`: rows of a `datasets` dataset (kontext_core.data.huggingface), referenced as `hf:` rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from kontext_core.config import DatasetEntry
from kontext_core.data.backend import DatasetBackend
from kontext_core.data.hf_refs import hf_ref_digest, hf_ref_size, open_hf_ref
from kontext_core.data.huggingface import REF_PREFIX, huggingface_records
from kontext_core.data.local import resolve
from kontext_core.data.records import Problem, Record
from kontext_core.data.scan import folder_digest
from kontext_core.hub.resolve import resolve as resolve_hub


class HuggingFaceBackend(DatasetBackend):
    type = "huggingface"
    ref_prefix = REF_PREFIX

    def check(self, entry: DatasetEntry, workdir: Path) -> list[str]:
        if not entry.dataset_name:
            return [f"dataset '{entry.id}': type 'huggingface' needs 'dataset_name'"]
        return []

    def local_location(self, entry: DatasetEntry) -> str | None:
        return entry.dataset_name

    def records(
        self, entry: DatasetEntry, workdir: Path, scan_cache_dir: Path | None
    ) -> tuple[list[Record], list[Problem]]:
        return huggingface_records(entry, workdir)

    def fingerprint(self, entry: DatasetEntry, workdir: Path, memo_file: Path) -> Any:
        local = resolve(entry.dataset_name or "", workdir)
        if local.exists():
            return folder_digest(local, memo_file)
        # A hub id: the commit its revision resolves to (from the cache when offline), not `main`;
        # fetch downloads it when only the hub has it (never this).
        snapshot = resolve_hub(entry.dataset_name or "", entry.revision, "dataset")
        return {"hub": entry.dataset_name, "split": entry.split, "commit": snapshot.commit}

    def open_ref(self, ref: str, workdir: Path) -> Image.Image:
        return open_hf_ref(ref, workdir)

    def open_verified(self, ref: str, workdir: Path, digest: str) -> Image.Image:
        return open_hf_ref(ref, workdir, digest)  # one read: the bytes checked are the bytes decoded

    def ref_digest(self, ref: str, workdir: Path) -> str:
        return hf_ref_digest(ref, workdir)

    def ref_size(self, ref: str, workdir: Path) -> tuple[int, int]:
        return hf_ref_size(ref, workdir)
