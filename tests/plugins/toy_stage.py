"""A stage added from outside kontext_core, written the way a user would add one: it counts the pair
table's pairs per split and writes them as a small table. Its spec declares what it reads, writes and
hashes, and its roles: the report it publishes and its line in the run's summary. Nothing else names it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from kontext_core.fsutil import write_json
from kontext_core.stages.engine import Artifact, StageContext, StageReport, StageSpec

TOY_DIR = "artifacts/toy"


def stage_toy(ctx: StageContext) -> None:
    """Count the pairs per split."""
    counts = dict(sorted(Counter(pair["split"] for pair in ctx.read_json("pair.pairs")).items()))
    write_json(ctx.out(TOY_DIR) / "counts.json", {"seed": ctx.params.seed, "pairs": counts})
    ctx.info.update({"pairs": counts})


def toy_artifacts(report: StageReport) -> list[Artifact]:
    rows = [{"split": split, "pairs": n} for split, n in report.info["pairs"].items()]
    return [Artifact("table", "kontext-toy-counts", rows, "pairs per split")]


def toy_summary(manifest: dict[str, Any], metric: str) -> list[str]:
    counts = (manifest.get("info") or {}).get("pairs", {})
    return [f"toy: {sum(counts.values())} pairs counted"]


SPEC = StageSpec(
    "toy",
    stage_toy,
    params_keys=["seed"],
    reads=["pair.pairs"],
    outs=[TOY_DIR],
    products={"counts": f"{TOY_DIR}/counts.json"},
    artifacts=toy_artifacts,
    summary=toy_summary,
)
