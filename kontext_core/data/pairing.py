"""Pair edit images with their references and report what could not be paired.

An edit image pairs with the record of the same key (relative path, or row index) in each dataset
named by its `conditioning_data`; generated sets (`conditioning: [...]`) pair with the file that the
`degrade` stage writes for the same key.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kontext_core.config import DatasetConfig, DatasetEntry, Params
from kontext_core.data.backends import Problem, Record
from kontext_core.data.buckets import target_size
from kontext_core.data.degrade import generated_dataset_id, pick_caption
from kontext_core.data.images import ImageReadError, image_size


@dataclass
class PairReport:
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)

    def add_problem(self, dataset_id: str, path: str, reason: str) -> None:
        self.problems.append({"dataset_id": dataset_id, "path": path, "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {"datasets": self.datasets, "problems": self.problems}

    def to_markdown(self) -> str:
        lines = ["# Pre-flight report", "", "| dataset | images | usable pairs | missing refs | unreadable | buckets |", "|---|---|---|---|---|---|"]
        for dataset_id, stats in sorted(self.datasets.items()):
            buckets = ", ".join(f"{k}: {v}" for k, v in sorted(stats["buckets"].items()))
            lines.append(
                f"| {dataset_id} | {stats['images']} | {stats['pairs']} | "
                f"{stats['missing_references']} | {stats['unreadable']} | {buckets} |"
            )
        if self.problems:
            lines += ["", "## Problems", ""]
            lines += [f"- `{p['path']}` ({p['dataset_id']}): {p['reason']}" for p in self.problems]
        return "\n".join(lines) + "\n"


def _inherit_resolution(reference: DatasetEntry, edit: DatasetEntry) -> DatasetEntry:
    if reference.resolution is not None:
        return reference
    return reference.model_copy(
        update={"resolution": edit.resolution, "resolution_type": edit.resolution_type}
    )


def _header_size(record: Record, from_stored: Any) -> tuple[int, int]:
    # fetch fills the header size; records without one (older tables) are probed here.
    if record.width is not None and record.height is not None:
        return record.width, record.height
    return image_size(from_stored(record.image))


def build_pairs(
    params: Params,
    datasets: DatasetConfig,
    records: dict[str, list[Record]],
    fetch_problems: list[Problem],
    degrade_dir: Path,
    to_stored: Any,
    from_stored: Any,
) -> tuple[list[dict[str, Any]], PairReport]:
    """Return the pair table and the pre-flight report.

    `to_stored` / `from_stored` convert between real paths and the project-relative strings kept in
    tables, so a copy of the project (as `dvc repro` on a clone) reads the same tables.
    """
    report = PairReport()
    for problem in fetch_problems:
        report.add_problem(problem.dataset_id, problem.path, problem.reason)
    by_id = datasets.by_id()
    pairs: list[dict[str, Any]] = []
    for edit in datasets.edit_sets():
        edit_records = records.get(edit.id, [])
        ref_index = {
            ref_id: {r.key: r for r in records.get(ref_id, [])} for ref_id in edit.conditioning_ids
        }
        stats = {"images": len(edit_records), "pairs": 0, "missing_references": 0, "unreadable": 0, "missing_captions": 0, "buckets": Counter()}
        for record in edit_records:
            try:
                width, height = _header_size(record, from_stored)
            except ImageReadError as exc:
                stats["unreadable"] += 1
                report.add_problem(edit.id, record.image, str(exc).split(": ", 1)[-1])
                continue
            bucket = target_size(width, height, edit)
            references: list[dict[str, Any]] = []
            caption = record.caption
            missing = False
            for ref_id in edit.conditioning_ids:
                ref_record = ref_index[ref_id].get(record.key)
                if ref_record is None:
                    missing = True
                    report.add_problem(edit.id, record.image, f"no reference with key '{record.key}' in '{ref_id}'")
                    continue
                ref_entry = _inherit_resolution(by_id[ref_id], edit)
                if ref_entry.conditioning_type == "reference_loose":
                    try:
                        ref_w, ref_h = _header_size(ref_record, from_stored)
                    except ImageReadError as exc:
                        missing = True
                        report.add_problem(ref_id, ref_record.image, str(exc).split(": ", 1)[-1])
                        continue
                    ref_bucket = target_size(ref_w, ref_h, ref_entry)
                else:
                    ref_bucket = bucket
                references.append({"dataset_id": ref_id, "image": ref_record.image, "size": list(ref_bucket), "generated": None})
                if caption is None and ref_record.caption:
                    caption = ref_record.caption
            for generator in edit.conditioning or []:
                gen_id = generated_dataset_id(edit.id, generator)
                out = degrade_dir / gen_id / (Path(record.key).with_suffix(".png").as_posix())
                references.append(
                    {
                        "dataset_id": gen_id,
                        "image": to_stored(out),
                        "size": list(bucket),
                        "generated": {"source": record.image, **generator.model_dump()},
                    }
                )
                caption = pick_caption(generator, params.seed, record.key) or caption
            if missing:
                stats["missing_references"] += 1
                continue
            if not references:
                report.add_problem(edit.id, record.image, "edit image has no reference dataset")
                continue
            if caption is None:
                stats["missing_captions"] += 1
                report.add_problem(edit.id, record.image, "no caption")
                caption = ""
            stats["pairs"] += 1
            stats["buckets"][f"{bucket[0]}x{bucket[1]}"] += 1
            pairs.append(
                {
                    "pair_id": f"{edit.id}/{record.key}",
                    "dataset_id": edit.id,
                    "key": record.key,
                    "target": record.image,
                    "size": list(bucket),
                    "references": references,
                    "caption": caption,
                    "split": "eval" if edit.id == params.eval_dataset_id else "train",
                }
            )
        stats["buckets"] = dict(stats["buckets"])
        report.datasets[edit.id] = stats
    return pairs, report
