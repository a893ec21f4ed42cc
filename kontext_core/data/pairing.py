"""Pair edit images with their references and report what could not be paired.

An edit image pairs with the record of the same key (relative path with extension, or row index)
in each dataset named by its `conditioning_data`; generated sets (`conditioning: [...]`) pair with
the file the `degrade` stage writes for the same key. Each image gets a crop plan
(kontext_core.data.buckets): a `reference_strict` reference copies its edit image's plan, a
`reference_loose` one is bucketed and cropped on its own.

Captions: the pair's caption is the edit set's. A reference's `caption` is set only where it may
replace that caption: under `conditioning_multidataset_sampling: random` with more than one
reference set (the trainer's EpochSampler picks one set per sample from (seed, epoch, key) and uses
its caption when it has one). A generated set's `captions` are the task prompt: with a single reference set they
become the pair's caption.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kontext_core.config import ConditioningGenerator, DatasetConfig, DatasetEntry, Params
from kontext_core.data.buckets import crop_plan, meets_minimum
from kontext_core.data.degrade import generated_dataset_id, generator_spec, pick_caption
from kontext_core.data.images import ImageReadError, image_size
from kontext_core.data.record_table import RecordLists, RecordSource
from kontext_core.data.records import Problem, Record
from kontext_core.data.report import (
    MISSING_REFERENCE,
    NO_REFERENCE_SET,
    ORPHAN_REFERENCE,
    TOO_SMALL,
    PairReport,
)
from kontext_core.progress import progress

DEGRADE_DIR = "data/degrade"
# Fetch problems that mean an image was found but cannot be used.
_LOST_KINDS = {"unreadable", "outside_root", "composite"}


def inherit_resolution(reference: DatasetEntry, edit: DatasetEntry) -> DatasetEntry:
    """The reference entry with the edit set's resolution keys wherever it does not set its own."""
    update = {
        key: getattr(edit, key)
        for key in DatasetEntry.INHERITED_KEYS
        if key not in reference.model_fields_set and key in edit.model_fields_set
    }
    return reference.model_copy(update=update) if update else reference


# An edit set's SimpleTuner sampling keys, carried by each of its pairs to the trainer's sampler.
SAMPLING_KEYS = (
    "repeats",
    "probability",
    "start_epoch",
    "end_epoch",
    "start_step",
    "end_step",
    "is_regularisation_data",
)


def sampling_of(entry: DatasetEntry) -> dict[str, Any]:
    """The sampling keys that differ from SimpleTuner's defaults (empty: a plain dataset)."""
    return {
        key: getattr(entry, key)
        for key in SAMPLING_KEYS
        if getattr(entry, key) != DatasetEntry.model_fields[key].default
    }


def sampled_keys(entry: DatasetEntry, records: RecordSource) -> set[str] | None:
    """SimpleTuner's `max_num_samples`: the keys of a fixed subset, drawn with the dataset id as the
    seed; None when every record is kept."""
    if entry.max_num_samples is None or records.count(entry.id) <= entry.max_num_samples:
        return None
    keys = sorted(r.key for r in records.iter(entry.id))
    random.Random(entry.id).shuffle(keys)
    return set(keys[: entry.max_num_samples])


def generated_path(gen_id: str, key: str) -> str:
    """Project-relative file the degrade stage writes for `key` of a generated set."""
    return f"{DEGRADE_DIR}/{gen_id}/{key}.png"


def _header_size(record: Record, from_stored: Any) -> tuple[int, int]:
    # fetch fills the header size; records without one (older tables) are probed here.
    if record.width is not None and record.height is not None:
        return record.width, record.height
    return image_size(from_stored(record.image))


class _EditSetPairer:
    """Pairs one edit set; keeps the per-dataset statistics in the report."""

    def __init__(
        self,
        params: Params,
        datasets: DatasetConfig,
        edit: DatasetEntry,
        records: RecordSource,
        report: PairReport,
        from_stored: Any,
    ):
        self.params = params
        self.edit = edit
        self.report = report
        self.from_stored = from_stored
        by_id = datasets.by_id()
        self.ref_entries = {ref_id: inherit_resolution(by_id[ref_id], edit) for ref_id in edit.conditioning_ids}
        # A reference set is looked up by key, so it is held; the edit set itself streams past.
        self.ref_index = {ref_id: {r.key: r for r in records.iter(ref_id)} for ref_id in edit.conditioning_ids}
        self.generators: list[ConditioningGenerator] = list(edit.conditioning or [])
        self.set_count = len(self.ref_entries) + len(self.generators)
        self.random_sampling = params.conditioning_multidataset_sampling == "random"
        self.stats = report.stats(edit.id, "edit")
        self.sampling = sampling_of(edit)
        self._plans: dict[tuple[str, int, int], dict[str, Any]] = {}
        self._generated_entries: dict[str, DatasetEntry] = {}

    def plan(self, width: int, height: int, entry: DatasetEntry, key: str) -> dict[str, Any]:
        # Only random cuts depend on the file (crop off cuts too, by crop_style); other plans are
        # shared by every image of one size.
        if entry.crop_style == "random" or (entry.crop and entry.crop_aspect == "random"):
            return crop_plan(width, height, entry, self.params.seed, key)
        memo_key = (entry.id, width, height)
        if memo_key not in self._plans:
            self._plans[memo_key] = crop_plan(width, height, entry, self.params.seed, key)
        return self._plans[memo_key]

    def loose_generated(self, gen_id: str) -> DatasetEntry:
        if gen_id not in self._generated_entries:
            self._generated_entries[gen_id] = self.edit.model_copy(update={"id": gen_id})
        return self._generated_entries[gen_id]

    def reference_caption(self, entry: DatasetEntry, record: Record) -> str | None:
        if self.random_sampling and self.set_count > 1 and entry.gives_captions and record.caption:
            return record.caption
        return None

    def real_reference(self, ref_id: str, record: Record, target_plan: dict) -> dict[str, Any] | None:
        entry = self.ref_entries[ref_id]
        ref_record = self.ref_index[ref_id].get(record.key)
        if ref_record is None:
            self.stats.missing_references.append(record.image)
            self.report.add_problem(
                self.edit.id, record.image, f"no reference with key '{record.key}' in '{ref_id}'", MISSING_REFERENCE
            )
            return None
        if entry.conditioning_type == "reference_loose":
            try:
                width, height = _header_size(ref_record, self.from_stored)
            except ImageReadError as exc:
                self.stats.missing_references.append(record.image)
                self.report.add_problem(ref_id, ref_record.image, f"unreadable reference: {exc}", MISSING_REFERENCE)
                return None
            plan = self.plan(width, height, entry, record.key)
            self.report.stats(ref_id, "reference").buckets["{}x{}".format(*plan["size"])] += 1
        else:
            plan = dict(target_plan)
        return {
            "dataset_id": ref_id,
            "image": ref_record.image,
            "digest": ref_record.digest,
            "size": list(plan["size"]),
            "crop": plan,
            "conditioning_type": entry.conditioning_type or "reference_strict",
            "generated": None,
            "caption": self.reference_caption(entry, ref_record),
        }

    def generated_reference(
        self, generator: ConditioningGenerator, record: Record, width: int, height: int, target_plan: dict
    ) -> dict[str, Any]:
        gen_id = generated_dataset_id(self.edit.id, generator)
        if generator.conditioning_type == "reference_loose":
            # The generated image has its source's size; a loose one is still cropped on its own.
            plan = self.plan(width, height, self.loose_generated(gen_id), record.key)
        else:
            plan = dict(target_plan)
        caption = pick_caption(generator, self.params.seed, record.key) if self.random_sampling else None
        return {
            "dataset_id": gen_id,
            "image": generated_path(gen_id, record.key),
            "size": list(plan["size"]),
            "crop": plan,
            "conditioning_type": generator.conditioning_type,
            # The source's digest keys the generated image (degrade); the image's own digest is
            # degrade's to record (its manifest), so none is given here.
            "generated": {"source": record.image, "source_digest": record.digest, **generator_spec(generator)},
            "caption": caption,
        }

    def pair(self, record: Record) -> dict[str, Any] | None:
        edit = self.edit
        try:
            width, height = _header_size(record, self.from_stored)
        except ImageReadError as exc:
            self.stats.unreadable.append({"path": record.image, "reason": str(exc)})
            self.report.add_problem(edit.id, record.image, str(exc), "unreadable")
            return None
        if not meets_minimum(width, height, edit):
            self.stats.too_small.append(record.image)
            self.report.add_problem(
                edit.id,
                record.image,
                f"{width}x{height} is below minimum_image_size {edit.minimum_image_size:g}",
                TOO_SMALL,
            )
            return None
        target_plan = self.plan(width, height, edit, record.key)
        references = [self.real_reference(ref_id, record, target_plan) for ref_id in self.ref_entries]
        if any(ref is None for ref in references):
            return None
        references += [self.generated_reference(g, record, width, height, target_plan) for g in self.generators]
        caption = record.caption
        if self.set_count == 1 and references[0]["caption"] is not None:
            caption = references[0]["caption"]
            references[0]["caption"] = None
        if caption is None:
            self.stats.missing_captions.append(record.image)
            caption = ""
        self.stats.pairs += 1
        self.stats.buckets["{}x{}".format(*target_plan["size"])] += 1
        pair = {
            "pair_id": f"{edit.id}/{record.key}",
            "dataset_id": edit.id,
            "key": record.key,
            "target": record.image,
            # The target's content digest as fetch recorded it: what cache keys use.
            "digest": record.digest,
            "size": list(target_plan["size"]),
            "crop": target_plan,
            "caption": caption,
            "split": "eval" if edit.id == self.params.eval_dataset_id else "train",
            "references": references,
        }
        if self.sampling:
            pair["sampling"] = self.sampling
        return pair


def build_pairs(
    params: Params,
    datasets: DatasetConfig,
    records: RecordSource | Mapping[str, list[Record]],
    fetch_problems: list[Problem],
    degrade_dir: Path | None = None,
    to_stored: Any = str,
    from_stored: Any = Path,
) -> tuple[list[dict[str, Any]], PairReport]:
    """Return the pair table and the pre-flight report (failures listed in `report.failures`).

    `from_stored` turns a table path into a real path, for records without a header size.
    `degrade_dir` and `to_stored` are kept for callers of the older signature; generated images are
    named by `generated_path`. The pair stage streams the table instead (`iter_pairs`).
    """
    report = PairReport()
    pairs = list(iter_pairs(params, datasets, records, fetch_problems, report, from_stored))
    return pairs, report


def iter_pairs(
    params: Params,
    datasets: DatasetConfig,
    records: RecordSource | Mapping[str, list[Record]],
    fetch_problems: list[Problem],
    report: PairReport,
    from_stored: Any = Path,
) -> Iterator[dict[str, Any]]:
    """Yield the pair table one pair at a time, in table order, filling `report` on the way.

    The report is complete (limits checked, failures listed) once the iterator is exhausted. Only the
    report, the reference sets being paired against and the edit set's keys (when it has reference
    sets) are held: edit records stream from `records` and each pair is handed on as soon as it is made.
    """
    if isinstance(records, Mapping):
        records = RecordLists(records)
    referenced = datasets.referenced_ids()
    for problem in fetch_problems:
        role = "reference" if problem.dataset_id in referenced else "edit"
        stats = report.stats(problem.dataset_id, role)
        report.add_problem(problem.dataset_id, problem.path, problem.reason, problem.kind)
        if problem.kind in _LOST_KINDS:
            stats.images += 1
            stats.unreadable.append({"path": problem.path, "reason": problem.reason})
    sampled = {edit.id: sampled_keys(edit, records) for edit in datasets.edit_sets()}
    # One bar over every edit set's records: the stage's output stays one bounded display.
    bar = progress(sum(_count(records, e.id, sampled[e.id]) for e in datasets.edit_sets()), "pair", "image")
    for edit in datasets.edit_sets():
        pairer = _EditSetPairer(params, datasets, edit, records, report, from_stored)
        kept = sampled[edit.id]
        count = _count(records, edit.id, kept)
        pairer.stats.images += count
        if pairer.set_count == 0:
            pairer.stats.no_reference_set = True
            report.add_problem(
                edit.id,
                edit.instance_data_dir or edit.dataset_name or edit.id,
                "edit set has no conditioning_data and no conditioning generator",
                NO_REFERENCE_SET,
            )
            bar.update(count)
            continue
        edit_keys: set[str] = set()
        for record in records.iter(edit.id):
            if kept is not None and record.key not in kept:
                continue
            if pairer.ref_index:
                edit_keys.add(record.key)
            pair = pairer.pair(record)
            if pair is not None:
                yield pair
            bar.update()
        for ref_id, index in pairer.ref_index.items():
            ref_stats = report.stats(ref_id, "reference")
            ref_stats.images = len(index) + sum(
                1 for p in fetch_problems if p.dataset_id == ref_id and p.kind in _LOST_KINDS
            )
            for key, ref_record in sorted(index.items()):
                if key in edit_keys:
                    ref_stats.pairs += 1
                    continue
                ref_stats.orphan_references.append(ref_record.image)
                report.add_problem(
                    ref_id,
                    ref_record.image,
                    f"reference has no edit image with key '{key}' in '{edit.id}'",
                    ORPHAN_REFERENCE,
                )
    bar.close()
    report.check_limits(params.pair.max_missing_fraction)


def _count(records: RecordSource, dataset_id: str, kept: set[str] | None) -> int:
    return records.count(dataset_id) if kept is None else len(kept)
