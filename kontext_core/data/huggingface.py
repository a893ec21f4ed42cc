"""The `huggingface` backend: rows of a `datasets` dataset as records, images left in the dataset.

`dataset_name` is a hub id (downloaded by `datasets` on a user's machine) or a local path: a parquet
file, a `save_to_disk` folder, or a script-less dataset folder. The dataset is memory-mapped Arrow and
read in column batches, touching only the encoded image bytes (never `PIL` objects): fetch probes each
row's header for its size and leaves the pixels where they are. A record's image is a reference string

    hf:<dataset_name>?split=train&column=image&row=12[&revision=REV][&panel=1/2]

that `kontext_core.data.sources` opens lazily: the dataset is opened once per process, the row's
bytes decoded, and for a composite the panel `panel=i/n` cropped (panels of width W // n).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from kontext_core.config import ConfigError, DatasetEntry, HuggingfaceOptions
from kontext_core.data.captions import uses_only_instance_prompt, with_instance_prompt
from kontext_core.data.images import ImageReadError, probe_header, probe_stream
from kontext_core.data.records import COMPOSITE, MISSING_CAPTION, OUTSIDE_ROOT, UNREADABLE, Problem, Record
from kontext_core.hub.resolve import resolve as resolve_hub

log = logging.getLogger(__name__)

REF_PREFIX = "hf:"
_BATCH_ROWS = 256
# Below this many rows one process reads them all faster than a pool starts (~8,000 rows/s each).
_PARALLEL_ROWS = 4096


@functools.lru_cache(maxsize=256)
def _quoted(text: str) -> str:
    # One reference per row: quote each distinct name once, not 200,000 times.
    return quote(text, safe="/:@._-~[]")


@dataclass(frozen=True)
class HfRef:
    """One row's image (or one panel of it) in a dataset."""

    dataset: str  # hub id, or a local path (relative to the project, or absolute)
    split: str
    column: str
    row: int
    revision: str | None = None
    panel: int = 0
    panels: int = 1

    def __str__(self) -> str:
        text = f"{REF_PREFIX}{_quoted(self.dataset)}?split={_quoted(self.split)}&column={_quoted(self.column)}"
        text += f"&row={self.row}"
        if self.revision:
            text += f"&revision={_quoted(self.revision)}"
        if self.panels > 1:
            text += f"&panel={self.panel}/{self.panels}"
        return text

    @classmethod
    def parse(cls, ref: str) -> HfRef:
        if not ref.startswith(REF_PREFIX) or "?" not in ref:
            raise ValueError(f"not a Hugging Face image reference: {ref!r}")
        dataset, _, query = ref[len(REF_PREFIX) :].partition("?")
        fields = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        try:
            panel, panels = (int(x) for x in fields.get("panel", "0/1").split("/"))
            return cls(
                dataset=unquote(dataset),
                split=fields["split"],
                column=fields["column"],
                row=int(fields["row"]),
                revision=fields.get("revision") or None,
                panel=panel,
                panels=panels,
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"malformed Hugging Face image reference {ref!r}: {exc}") from exc


def is_hf_ref(ref: str) -> bool:
    return ref.startswith(REF_PREFIX)


def _local_path(dataset: str, base_dir: Path) -> Path | None:
    path = Path(dataset).expanduser()
    path = path if path.is_absolute() else Path(base_dir) / path
    return path if path.exists() else None


def _check_data_files(local: Path, dataset: str) -> None:
    """Every parquet/arrow file of a local dataset must be whole: `datasets` skips an empty one
    silently (rows lost without a word), and a damaged one fails later naming no file."""
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.suffix in (".parquet", ".arrow"))
    for file in files:
        if any(part.startswith(".") for part in file.relative_to(local.parent if local.is_file() else local).parts):
            continue
        if file.stat().st_size == 0:
            raise ConfigError(f"dataset_name '{dataset}': {file} is empty (0 bytes); remove it or restore it")
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                pq.read_metadata(file)
            except Exception as exc:  # pyarrow raises ArrowInvalid/OSError: the file is what matters
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"dataset_name '{dataset}': {file} is not a readable parquet file: {first}") from None


def _load(dataset: str, split: str, revision: str | None, base_dir: Path) -> Any:
    import datasets

    local = _local_path(dataset, base_dir)
    if local is None:
        # A hub id: the snapshot its revision resolves to in the hub cache is a dataset folder that
        # `datasets` loads as it is (its card's configs, its parquet shards); only the hub has it:
        # `datasets` downloads that commit. (By id, `datasets` refuses the hub cache when offline.)
        snapshot = resolve_hub(dataset, revision, "dataset")
        if snapshot.path is not None:
            return datasets.load_dataset(str(snapshot.path), split=split)
        return datasets.load_dataset(dataset, split=split, revision=snapshot.commit)
    if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConfigError(f"{dataset}: no split '{split}' (splits: {', '.join(loaded)})")
            return loaded[split]
        return loaded
    _check_data_files(local, dataset)
    if local.is_file():
        builder = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
        if local.suffix not in builder:
            raise ConfigError(f"{dataset}: unsupported dataset file type '{local.suffix}'")
        return datasets.load_dataset(builder[local.suffix], data_files=str(local), split=split)
    return datasets.load_dataset(str(local), split=split)


@functools.lru_cache(maxsize=16)
def _open_cached(dataset: str, split: str, revision: str | None, base_dir: str) -> Any:
    return _load(dataset, split, revision, Path(base_dir))


# lru_cache does not hold back a second caller while the first one computes: cache_vae's two decoding
# threads would load one dataset twice at once, and `datasets` does not survive that (its progress
# bars share tqdm's class lock, which one load deletes while the other uses it).
_OPENING = threading.Lock()


def open_dataset(dataset: str, split: str, revision: str | None, base_dir: Path) -> Any:
    """The dataset, opened once per process (memory-mapped; nothing is materialised).

    A hub id is opened at the commit its revision resolves to now, so a moved `refs/main` is seen
    by a long-lived process too."""
    try:
        if _local_path(dataset, base_dir) is None:
            revision = resolve_hub(dataset, revision, "dataset").commit
        with _OPENING:
            return _open_cached(dataset, split, revision, str(Path(base_dir).resolve()))
    except ConfigError:
        raise
    except Exception as exc:  # datasets raises many types; the user needs the name and the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"dataset_name '{dataset}' (split '{split}'): cannot load: {first}") from exc


@functools.lru_cache(maxsize=16)
def _image_view(dataset: str, split: str, revision: str | None, base_dir: str, column: str) -> Any:
    return open_dataset(dataset, split, revision, Path(base_dir)).select_columns([column]).with_format("arrow")


@functools.lru_cache(maxsize=64)
def allowed_roots(dataset: str, base_dir: Path) -> tuple[str, ...]:
    """Where a row's image `path` cell may point: the local dataset's folder (a file's parent), and
    the Hugging Face caches (where `datasets` keeps a hub dataset's files); nothing else is read."""
    roots: list[Path] = []
    local = _local_path(dataset, base_dir)
    if local is not None:
        roots.append(local.resolve() if local.is_dir() else local.resolve().parent)
    try:
        import datasets.config as ds_config
        from huggingface_hub import constants as hub_constants

        roots += [Path(ds_config.HF_DATASETS_CACHE), Path(hub_constants.HF_HUB_CACHE)]
    except ImportError:
        pass
    return tuple(dict.fromkeys(str(Path(root).expanduser().resolve()) for root in roots))


def _inside_roots(path: Path, roots: tuple[str, ...]) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + os.sep) for root in roots)


def _encoded(value: Any, where: str, roots: tuple[str, ...] | None = None) -> bytes | Path:
    """Encoded image bytes (or the file they live in) from an image cell: Image struct, binary or path.

    A `path` (relative: to the first root) that resolves outside `roots` raises an `outside_root`
    ImageReadError before anything is opened."""
    path: Path | None = None
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            path = Path(value["path"])
    elif isinstance(value, bytes | bytearray):
        return bytes(value)
    elif isinstance(value, str) and value:
        path = Path(value)
    if path is None:
        raise ImageReadError(f"{where}: the image cell is empty")
    if roots is not None:
        if not path.is_absolute() and roots:
            path = Path(roots[0]) / path
        if not _inside_roots(path, roots):
            raise ImageReadError(f"{where}: image path {path} is outside the dataset's folder (refused)", OUTSIDE_ROOT)
    return path


def row_image(ref: HfRef, workdir: Path) -> bytes | Path:
    base = str(Path(workdir).resolve())
    view = _image_view(ref.dataset, ref.split, ref.revision, base, ref.column)
    if not 0 <= ref.row < view.num_rows:
        raise ImageReadError(f"{ref}: row {ref.row} is out of range ({view.num_rows} rows)")
    return _encoded(view[ref.row].column(ref.column)[0].as_py(), str(ref), allowed_roots(ref.dataset, Path(base)))


# ----------------------------------------------------------------------------------------------
# fetch: rows -> records


def _dotted(value: Any, column: str) -> Any:
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _text(value: Any) -> str | None:
    if isinstance(value, list):
        return next((t for t in (_text(v) for v in value) if t), None)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _check_column_path(features: Any, column: str, entry_id: str, key: str) -> None:
    """A caption path must exist in the schema; a row where it is empty is reported, not this."""
    node: Any = features
    walked: list[str] = []
    for part in column.split("."):
        fields = list(node) if isinstance(node, dict) else []
        if part not in fields:
            where = ".".join(walked) or "the dataset"
            raise ConfigError(
                f"dataset '{entry_id}': huggingface.{key} '{column}' not found: {where} has "
                f"{', '.join(fields) or 'no fields'}"
            )
        node = node[part]
        walked.append(part)


def _caption_columns(entry: DatasetEntry, options: HuggingfaceOptions, features: Any) -> list[str]:
    if entry.caption_strategy != "huggingface":
        if entry.caption_strategy in ("textfile", "filename"):
            raise ConfigError(
                f"dataset '{entry.id}': caption_strategy '{entry.caption_strategy}' does not apply to a "
                "huggingface dataset (use 'huggingface', 'instanceprompt' or null)"
            )
        return []
    columns = options.caption_column
    names = [columns] if isinstance(columns, str) else list(columns or [])
    for name in names:
        _check_column_path(features, name, entry.id, "caption_column")
    if options.fallback_caption_column:
        _check_column_path(features, options.fallback_caption_column, entry.id, "fallback_caption_column")
        names.append(options.fallback_caption_column)
    return names


def dataset_location(entry: DatasetEntry, base_dir: Path) -> str:
    """`dataset_name` as references carry it: project-relative when local and inside the project."""
    name = entry.dataset_name or ""
    local = _local_path(name, base_dir)
    if local is None:
        return name
    try:
        return local.resolve().relative_to(Path(base_dir).resolve()).as_posix()
    except ValueError:
        return str(local.resolve())


def panel_digest(content: str, panel: int, panels: int) -> str:
    """An `hf:` reference's digest: its row image's SHA-256 and the panel (hf_refs.hf_ref_digest)."""
    return hashlib.sha256(f"{content}|panel={panel}/{panels}".encode()).hexdigest()


def _cell_digest(value: Any, where: str, roots: tuple[str, ...]) -> str:
    """SHA-256 of a row's encoded image (the Arrow buffer's bytes, or the file a `path` cell names)."""
    import pyarrow as pa

    from kontext_core import fsutil

    if isinstance(value, pa.Buffer):
        return fsutil.sha256_image_bytes(memoryview(value))
    data = _encoded(value, where, roots)
    return fsutil.sha256_file(data, remember=False) if isinstance(data, Path) else fsutil.sha256_image_bytes(data)


def _probe_cell(value: Any, where: str, roots: tuple[str, ...]) -> tuple[int, int]:
    import pyarrow as pa

    if isinstance(value, pa.Buffer):
        return probe_stream(pa.BufferReader(value), value.size)
    return probe_header(_encoded(value, where, roots))


@dataclass(frozen=True)
class _Plan:
    """What every row of one entry needs: picklable, so row ranges can go to worker processes."""

    entry: DatasetEntry
    base_dir: str
    location: str
    caption_columns: tuple[str, ...]
    roots: tuple[str, ...]
    panels: int
    panel: int


def _plan(entry: DatasetEntry, base_dir: Path) -> tuple[_Plan, int]:
    options = entry.huggingface or HuggingfaceOptions()
    location = dataset_location(entry, base_dir)
    dataset = open_dataset(location, entry.split, entry.revision, base_dir)
    if options.image_column not in dataset.column_names:
        raise ConfigError(
            f"dataset '{entry.id}': huggingface.image_column '{options.image_column}' not in "
            f"{entry.dataset_name} (columns: {', '.join(dataset.column_names)})"
        )
    caption_columns = _caption_columns(entry, options, dataset.features)
    composite = options.composite_image_config
    panels = composite.image_count if composite.enabled else 1
    roots = tuple(dict.fromkeys([options.image_column] + [c.split(".")[0] for c in caption_columns]))
    plan = _Plan(
        entry,
        str(base_dir),
        location,
        tuple(caption_columns),
        roots,
        panels,
        composite.select_index if panels > 1 else 0,
    )
    return plan, dataset.num_rows


def _row_range(plan: _Plan, start: int, stop: int) -> tuple[list[Record], list[Problem]]:
    """Records and problems of rows [start, stop), reading one Arrow batch at a time."""
    import pyarrow.compute as pc

    entry = plan.entry
    image_column = plan.roots[0]
    dataset = open_dataset(plan.location, entry.split, entry.revision, Path(plan.base_dir))
    # A contiguous range of a memory-mapped table: a slice, nothing is copied.
    view = dataset.select_columns(list(plan.roots)).select(range(start, stop)).with_format("arrow")
    records: list[Record] = []
    problems: list[Problem] = []
    roots = allowed_roots(plan.location, Path(plan.base_dir))
    index = start
    for batch in view.iter(batch_size=_BATCH_ROWS):
        images = batch.column(image_column).combine_chunks()  # indexing a chunked array is slow
        if hasattr(images.type, "get_field_index") and images.type.get_field_index("bytes") >= 0:
            # Image feature: read each row's header straight from the Arrow buffer, copying nothing.
            image_bytes, image_paths = pc.struct_field(images, "bytes"), pc.struct_field(images, "path")

            def cell(i: int, image_bytes=image_bytes, image_paths=image_paths) -> Any:
                data = image_bytes[i]
                return data.as_buffer() if data.is_valid else {"bytes": None, "path": image_paths[i].as_py()}
        else:

            def cell(i: int, images=images) -> Any:
                return images[i].as_py()

        caption_cells = {root: batch.column(root).to_pylist() for root in plan.roots[1:]}
        for offset in range(batch.num_rows):
            row = index + offset
            where = f"{entry.dataset_name}[{row}]"
            try:
                width, height = _probe_cell(cell(offset), where, roots)
            except ImageReadError as exc:
                problems.append(Problem(entry.id, where, str(exc), exc.kind or UNREADABLE))
                continue
            if width < plan.panels:
                reason = f"composite width {width} is narrower than image_count {plan.panels}"
                problems.append(Problem(entry.id, where, reason, COMPOSITE))
                continue
            caption = None
            if uses_only_instance_prompt(entry):
                caption = entry.instance_prompt
            elif plan.caption_columns:
                cells = {root: caption_cells[root][offset] for root in caption_cells}
                caption = next((t for t in (_text(_dotted(cells, c)) for c in plan.caption_columns) if t), None)
                if caption is None:
                    reason = f"no caption in {', '.join(plan.caption_columns)}"
                    problems.append(Problem(entry.id, where, reason, MISSING_CAPTION))
            elif entry.caption_strategy == "instanceprompt":
                caption = entry.instance_prompt
            caption = with_instance_prompt(entry, caption)
            ref = HfRef(plan.location, entry.split, image_column, row, entry.revision, plan.panel, plan.panels)
            # Hashed here, once, from the bytes the header was read from: later stages key caches with it.
            content = _cell_digest(cell(offset), where, roots)
            records.append(
                Record(
                    dataset_id=entry.id,
                    key=f"{row:08d}",
                    image=str(ref),
                    caption=caption,
                    source=where,
                    # SimpleTuner floors the panel width: a remainder column is left out.
                    width=width // plan.panels,
                    height=height,
                    digest=panel_digest(content, plan.panel, plan.panels),
                )
            )
        index += batch.num_rows
    return records, problems


def _row_range_job(job: tuple[_Plan, int, int]) -> tuple[list[Record], list[Problem]]:
    return _row_range(*job)


def huggingface_records(
    entry: DatasetEntry, base_dir: Path, workers: int | None = None
) -> tuple[list[Record], list[Problem]]:
    """One record per usable row (its panel for composites); keys are zero-padded row indices.

    Rows are read in ranges on every core (`workers`, default all) once there are enough of them.
    """
    from concurrent.futures import ProcessPoolExecutor

    from kontext_core.data.scan import cpu_count, pool_context

    plan, n_rows = _plan(entry, base_dir)
    workers = workers or cpu_count()
    if workers <= 1 or n_rows < _PARALLEL_ROWS:
        return _row_range(plan, 0, n_rows)
    step = -(-n_rows // (workers * 4))
    jobs = [(plan, start, min(start + step, n_rows)) for start in range(0, n_rows, step)]
    records: list[Record] = []
    problems: list[Problem] = []
    # Forked workers inherit the opened (memory-mapped) dataset from open_dataset's cache.
    with ProcessPoolExecutor(max_workers=workers, mp_context=pool_context()) as pool:
        for part_records, part_problems in pool.map(_row_range_job, jobs):
            records += part_records
            problems += part_problems
    return records, problems
