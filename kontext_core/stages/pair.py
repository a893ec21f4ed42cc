"""pair: the pair table (edit <-> references <-> caption, bucket, crop plans) and the pre-flight report."""

from __future__ import annotations

import shutil

from kontext_core.config import DATASET_DEFAULT_KEYS
from kontext_core.fsutil import write_json, write_text
from kontext_core.stages.datasets import dataset_file_input, load_checked_datasets
from kontext_core.stages.engine import StageContext, StageSpec

PAIR_DIR = "data/pair"
# Where a failed pair stage leaves its report (its declared outputs are discarded on failure).
PREFLIGHT_FAILED_DIR = "artifacts/preflight_failed"


def stage_pair(ctx: StageContext) -> None:
    """The pair table (edit <-> references <-> caption, bucket, crop plans) and the pre-flight report."""
    from kontext_core.data.pairing import build_pairs
    from kontext_core.data.records import Problem, Record

    datasets = load_checked_datasets(ctx.params, ctx.workdir)
    fetched = ctx.read_json("fetch.records")
    records = {k: [Record(**r) for r in v] for k, v in fetched["records"].items()}
    problems = [Problem(**p) for p in fetched["problems"]]
    pairs, report = build_pairs(ctx.params, datasets, records, problems, from_stored=ctx.from_stored)
    out = ctx.out(PAIR_DIR)
    write_json(out / "pairs.json", pairs)
    write_json(out / "report.json", report.to_dict())
    write_text(out / "report.md", report.to_markdown())
    train_pairs = sum(p["split"] == "train" for p in pairs)
    if report.failures or not train_pairs:
        # The staged outputs are discarded on failure: keep the report where the message points.
        failed = ctx.path(PREFLIGHT_FAILED_DIR)
        write_json(failed / "report.json", report.to_dict())
        write_text(failed / "report.md", report.to_markdown())
        what = "no usable training pairs" if not train_pairs else "pre-flight check failed"
        reasons = "; ".join(report.failures) or "no training dataset"
        raise RuntimeError(f"pair: {what}: {reasons}; see {failed / 'report.md'}")
    shutil.rmtree(ctx.path(PREFLIGHT_FAILED_DIR), ignore_errors=True)
    ctx.info["pairs"] = {"train": train_pairs, "eval": sum(p["split"] == "eval" for p in pairs)}
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
    reads=["fetch.records"],
    outs=[PAIR_DIR],
    products={
        "pairs": f"{PAIR_DIR}/pairs.json",
        "report": f"{PAIR_DIR}/report.json",
        "report_md": f"{PAIR_DIR}/report.md",
    },
    extra_inputs=dataset_file_input,
)
