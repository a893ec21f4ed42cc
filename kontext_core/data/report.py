"""The pre-flight report of the `pair` stage: what was found, what pairs, and what was lost and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Problem kinds added by pairing (fetch's kinds are in kontext_core.data.records).
MISSING_REFERENCE = "missing_reference"  # edit image without a file of the same key in a reference set
ORPHAN_REFERENCE = "orphan_reference"  # reference file without an edit image of the same key
TOO_SMALL = "too_small"  # edit image below minimum_image_size
NO_REFERENCE_SET = "no_reference_set"  # edit set without conditioning_data or conditioning


@dataclass
class DatasetStats:
    role: str  # "edit" or "reference"
    images: int = 0
    pairs: int = 0
    missing_references: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    too_small: list[str] = field(default_factory=list)
    missing_captions: list[str] = field(default_factory=list)
    orphan_references: list[str] = field(default_factory=list)
    buckets: Counter = field(default_factory=Counter)
    no_reference_set: bool = False

    @property
    def lost(self) -> int:
        return len(self.missing_references) + len(self.unreadable) + len(self.too_small)

    @property
    def lost_fraction(self) -> float:
        return self.lost / self.images if self.images else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "role": self.role,
            "images": self.images,
            "pairs": self.pairs,
            "missing_references": self.missing_references,
            "unreadable": self.unreadable,
            "too_small": self.too_small,
            "missing_captions": self.missing_captions,
            "orphan_references": self.orphan_references,
            "buckets": dict(sorted(self.buckets.items())),
        }
        if self.role == "edit":
            out["lost_fraction"] = round(self.lost_fraction, 4)
        return out


@dataclass
class PairReport:
    datasets: dict[str, DatasetStats] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def stats(self, dataset_id: str, role: str) -> DatasetStats:
        if dataset_id not in self.datasets:
            self.datasets[dataset_id] = DatasetStats(role=role)
        return self.datasets[dataset_id]

    def add_problem(self, dataset_id: str, path: str, reason: str, kind: str) -> None:
        self.problems.append({"dataset_id": dataset_id, "path": path, "reason": reason, "kind": kind})

    def check_limits(self, max_missing_fraction: float) -> None:
        """Record a one-line failure per edit set with no usable pair or too much loss."""
        for dataset_id, stats in sorted(self.datasets.items()):
            if stats.role != "edit":
                continue
            summary = (
                f"{stats.images} images, {len(stats.missing_references)} missing references, "
                f"{len(stats.unreadable)} unreadable, {len(stats.too_small)} below minimum_image_size"
            )
            if stats.pairs == 0 and stats.no_reference_set:
                self.failures.append(
                    f"dataset '{dataset_id}' yields no usable pairs: it has no reference set "
                    "(neither conditioning_data nor conditioning)"
                )
            elif stats.pairs == 0:
                self.failures.append(f"dataset '{dataset_id}' yields no usable pairs ({summary})")
            elif stats.lost_fraction > max_missing_fraction:
                self.failures.append(
                    f"dataset '{dataset_id}' lost {stats.lost_fraction:.0%} of its images, above "
                    f"pair.max_missing_fraction = {max_missing_fraction} ({summary})"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "datasets": {k: v.to_dict() for k, v in sorted(self.datasets.items())},
            "problems": self.problems,
            "failures": self.failures,
        }

    def table_rows(self) -> list[dict[str, Any]]:
        return table_rows(self.to_dict())

    def to_markdown(self) -> str:
        rows = self.table_rows()
        header = list(rows[0]) if rows else ["dataset"]
        lines = ["# Pre-flight report", ""]
        if self.failures:
            lines += ["**Failed:** " + "; ".join(self.failures), ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows]
        if self.problems:
            lines += ["", "## Problems", ""]
            lines += [f"- `{p['path']}` ({p['dataset_id']}, {p['kind']}): {p['reason']}" for p in self.problems]
        return "\n".join(lines) + "\n"


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per dataset of a report (as in report.json), for Markdown and a Prefect table artifact."""
    return [
        {
            "dataset": dataset_id,
            "role": s["role"],
            "images": s["images"],
            "usable pairs": s["pairs"],
            "missing references": len(s["missing_references"]),
            "unreadable": len(s["unreadable"]),
            "below minimum size": len(s["too_small"]),
            "missing captions": len(s["missing_captions"]),
            "orphan references": len(s["orphan_references"]),
            "buckets": ", ".join(f"{k}: {v}" for k, v in s["buckets"].items()),
        }
        for dataset_id, s in report["datasets"].items()
    ]
