"""A Subjects200K-shaped dataset in the `datasets` hub cache, as a download of `Yuanshi/Subjects200K` leaves it.

The repository holds `README.md` (its `dataset_info` and `configs` card header) and parquet shards
`data/train-0000K-of-0000N.parquet` with the real columns: `image` (a two-panel composite: the
subject on a plain background | the subject in a scene), `collection`, `quality_assessment`
(compositeStructure, objectConsistency, imageQuality) and `description` (item, description_0,
description_1, category, description_valid); one split, `train`. Written into `<HF_HOME>/hub` as
a dataset repository (kontext_core.hub.cache), a dataset entry with
`dataset_name: Yuanshi/Subjects200K` then loads offline through `datasets.load_dataset`'s own code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kontext_core.fsutil import atomic_dir
from kontext_core.hub.cache import hub_cache_dir, write_snapshot

SUBJECTS_REPO = "Yuanshi/Subjects200K"

_CARD = """---
dataset_info:
  features:
  - name: image
    dtype: image
  - name: collection
    dtype: string
  - name: quality_assessment
    struct:
    - name: compositeStructure
      dtype: int64
    - name: objectConsistency
      dtype: int64
    - name: imageQuality
      dtype: int64
  - name: description
    struct:
    - name: item
      dtype: string
    - name: description_0
      dtype: string
    - name: description_1
      dtype: string
    - name: category
      dtype: string
    - name: description_valid
      dtype: bool
  splits:
  - name: train
    num_examples: {count}
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---

A replica of Subjects200K's layout and columns with generated pictures (kontext_core.data.subjects_replica).
"""


def _features():
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "collection": datasets.Value("string"),
            "quality_assessment": {
                "compositeStructure": datasets.Value("int64"),
                "objectConsistency": datasets.Value("int64"),
                "imageQuality": datasets.Value("int64"),
            },
            "description": {
                "item": datasets.Value("string"),
                "description_0": datasets.Value("string"),
                "description_1": datasets.Value("string"),
                "category": datasets.Value("string"),
                "description_valid": datasets.Value("bool"),
            },
        }
    )


def write_subjects_repo(out_dir: Path, *, count: int = 8, size: int = 64, seed: int = 0, shards: int = 2) -> Path:
    """The repository's files in `out_dir` (replaced atomically); the same arguments give the same bytes."""
    import datasets
    import numpy as np

    from kontext_core.data.samples import subjects_rows

    if count < shards or shards < 1:
        raise ValueError(f"subjects replica: count {count} must be >= shards {shards} >= 1")
    rows = subjects_rows(count, size, np.random.default_rng(seed))
    table = {
        "image": [row["image"] for row in rows],
        "collection": [f"collection_{2 + i % 2}" for i in range(count)],
        "quality_assessment": [
            {"compositeStructure": 5, "objectConsistency": 5, "imageQuality": 5} for _ in range(count)
        ],
        "description": [
            {
                "item": row["item"],
                "description_0": row["description_0"],
                "description_1": row["description_1"],
                "category": "shapes",
                "description_valid": True,
            }
            for row in rows
        ],
    }
    dataset = datasets.Dataset.from_dict(table, features=_features())
    with atomic_dir(Path(out_dir)) as tmp:
        root = Path(tmp)
        (root / "README.md").write_text(_CARD.replace("{count}", str(count)))
        (root / "data").mkdir()
        for index in range(shards):
            shard = dataset.shard(num_shards=shards, index=index, contiguous=True)
            shard.to_parquet(str(root / "data" / f"train-{index:05d}-of-{shards:05d}.parquet"))
    return Path(out_dir)


def write_subjects_hub_cache(
    hf_home: Path,
    repo_id: str = SUBJECTS_REPO,
    *,
    count: int = 8,
    size: int = 64,
    seed: int = 0,
    shards: int = 2,
    ref: str | None = "main",
    message: str = "",
) -> str:
    """Write the dataset into `<hf_home>/hub` as a download of `repo_id` would; returns the commit."""
    cache = hub_cache_dir(hf_home)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".subjects-", dir=cache) as tmp:
        repo = write_subjects_repo(Path(tmp) / "repo", count=count, size=size, seed=seed, shards=shards)
        return write_snapshot(cache, repo_id, repo, repo_type="dataset", ref=ref, message=message)
