"""pair: the pair table (edit <-> references <-> caption, bucket, crop plans) and the pre-flight report."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from typing import Any

from kontext_core.config import DATASET_DEFAULT_KEYS
from kontext_core.fsutil import write_json, write_json_array, write_text
from kontext_core.stages.datasets import dataset_file_input, load_checked_datasets
from kontext_core.stages.engine import StageContext, StageSpec

PAIR_DIR = "data/pair"
# Where a failed pair stage leaves its report (its declared outputs are discarded on failure).
PREFLIGHT_FAILED_DIR = "artifacts/preflight_failed"


def stage_pair(ctx: StageContext) -> None:
    """The pair table (edit <-> references <-> caption, bucket, crop plans) and the pre-flight report."""
    from kontext_core.data.pairing import iter_pairs
    from kontext_core.data.record_table import RecordTable
    from kontext_core.data.report import PairReport

    datasets = load_checked_datasets(ctx.params, ctx.workdir)
    # Read a dataset at a time as pairing reaches it: an edit set streams, a reference set is indexed.
    records = RecordTable(ctx.input("fetch.records"), ctx.input("fetch.summary"))
    report = PairReport()
    splits: Counter[str] = Counter()

    def counted(pairs: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for pair in pairs:
            splits[pair["split"]] += 1
            yield pair

    out = ctx.out(PAIR_DIR)
    # The table is written pair by pair as it is made (same bytes as one json.dumps of the list).
    pairs = iter_pairs(ctx.params, datasets, records, records.problems, report, from_stored=ctx.from_stored)
    write_json_array(out / "pairs.json", counted(pairs))
    # Problems may quote a file's absolute path in their message (an image library's error): relative.
    report.problems = ctx.relative_text(report.problems)
    for stats in report.datasets.values():
        stats.unreadable = ctx.relative_text(stats.unreadable)
    write_json(out / "report.json", report.to_dict())
    write_text(out / "report.md", report.to_markdown())
    train_pairs = splits["train"]
    if report.failures or not train_pairs:
        # The staged outputs are discarded on failure: keep the report where the message points.
        failed = ctx.path(PREFLIGHT_FAILED_DIR)
        write_json(failed / "report.json", report.to_dict())
        write_text(failed / "report.md", report.to_markdown())
        what = "no usable training pairs" if not train_pairs else "pre-flight check failed"
        reasons = "; ".join(report.failures) or "no training dataset"
        raise RuntimeError(f"pair: {what}: {reasons}; see {failed / 'report.md'}")
    shutil.rmtree(ctx.path(PREFLIGHT_FAILED_DIR), ignore_errors=True)
    ctx.info["pairs"] = {"train": train_pairs, "eval": splits["eval"]}
    ctx.info["problems"] = len(report.problems)


SPEC = StageSpec(
    "pair",
    stage_pair,
    params_keys=[
        "data_backend_config",
        "eval_dataset_id",
        "seed",
        "conditioning_multidataset_sampling",
        "pair",
        *DATASET_DEFAULT_KEYS,
    ],
    reads=["fetch.records", "fetch.summary"],
    outs=[PAIR_DIR],
    products={
        "pairs": f"{PAIR_DIR}/pairs.json",
        "report": f"{PAIR_DIR}/report.json",
        "report_md": f"{PAIR_DIR}/report.md",
    },
    extra_inputs=dataset_file_input,
    artifacts="kontext_core.stages.views:pair_artifacts",
)
