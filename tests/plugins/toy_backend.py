"""A third dataset backend, written the way a user would add one: solid-colour images made from the
entry's `instance_prompt`, referenced as `toy:<dataset>/<index>`. Nothing in a stage knows it.

Its own key, `toy_count` (how many images), lives in its own options model: registering the backend
is what makes the dataset file accept and check it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import Field

from kontext_core.config import DatasetEntry
from kontext_core.config.base import Strict
from kontext_core.data.backend import DatasetBackend
from kontext_core.data.records import Problem, Record

PREFIX = "toy:"
SIZE = 64
COUNT = 3


def _colour(ref: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(ref.encode()).digest()
    return digest[0], digest[1], digest[2]


class ToyOptions(Strict):
    toy_count: int = Field(COUNT, ge=1, le=100)


class ToyBackend(DatasetBackend):
    type = "toy"
    ref_prefix = PREFIX
    options = ToyOptions

    def check(self, entry: DatasetEntry, workdir: Path) -> list[str]:
        return [] if entry.instance_prompt else [f"dataset '{entry.id}': type 'toy' needs 'instance_prompt'"]

    def records(
        self, entry: DatasetEntry, workdir: Path, scan_cache_dir: Path | None
    ) -> tuple[list[Record], list[Problem]]:
        records = [
            Record(
                dataset_id=entry.id,
                key=f"{i:03d}",
                image=f"{PREFIX}{entry.instance_prompt}/{i}",
                caption=entry.instance_prompt,
                source=f"{PREFIX}{entry.instance_prompt}/{i}",
                width=SIZE,
                height=SIZE,
            )
            for i in range(self.options_of(entry).toy_count)
        ]
        return records, []

    def fingerprint(self, entry: DatasetEntry, workdir: Path, memo_file: Path) -> Any:
        return {"toy": entry.instance_prompt, "count": self.options_of(entry).toy_count}

    def open_ref(self, ref: str, workdir: Path) -> Image.Image:
        return Image.new("RGB", (SIZE, SIZE), _colour(ref))

    def ref_digest(self, ref: str, workdir: Path) -> str:
        return hashlib.sha256(ref.encode()).hexdigest()

    def ref_size(self, ref: str, workdir: Path) -> tuple[int, int]:
        return SIZE, SIZE
