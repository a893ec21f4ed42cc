"""docs/training.md's table of LoRA targets at the real geometry is what the code attaches today."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("lora_targets", ROOT / "bench" / "lora_targets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lora_targets"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_docs_table_matches_the_counts_on_the_full_size_meta_transformer():
    bench = _load()
    assert (
        bench.FULL_TRANSFORMER_CONFIG["num_layers"] == 19 and bench.FULL_TRANSFORMER_CONFIG["num_single_layers"] == 38
    )
    default = bench.count_preset("all")
    # 8 attention projections per double block and 3 per single block, each 3072 -> 3072: 16 x 6144 each.
    assert (default.double_block_modules, default.single_block_modules) == (8, 3)
    assert default.modules == 19 * 8 + 38 * 3
    assert default.trainable == (19 * 8 + 38 * 3) * 16 * (3072 + 3072)
    table = bench.markdown_table()
    assert table in (ROOT / "docs" / "training.md").read_text(), (
        "docs/training.md: the LoRA target table is out of date; paste `python bench/lora_targets.py`:\n" + table
    )
