"""Dataset backends: turn a dataset entry into records (image file, caption, key).

`local` walks `instance_data_dir`; `huggingface` loads `dataset_name` through `datasets` (a hub id
on a user's machine, a local folder of parquet files or a `save_to_disk` folder here) and splits
composite panels. A record's `key` is what pairing matches across datasets: the relative path for
folders, the row index for Hugging Face datasets.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from kontext_core.config import ConfigError, DatasetEntry, HuggingfaceOptions
from kontext_core.data.images import IMAGE_EXTENSIONS, to_rgb

log = logging.getLogger(__name__)


@dataclass
class Record:
    dataset_id: str
    key: str
    image: str
    caption: str | None
    source: str
    # Oriented size from the image header (fetch scans headers only); None when not scanned.
    width: int | None = None
    height: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Problem:
    dataset_id: str
    path: str
    reason: str


def resolve(path: str, base_dir: Path) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else base_dir / candidate


def _read_caption_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: caption file is not UTF-8 ({exc.reason})") from exc


def local_records(entry: DatasetEntry, base_dir: Path) -> tuple[list[Record], list[Problem]]:
    root = resolve(entry.instance_data_dir or "", base_dir).resolve()
    records: list[Record] = []
    problems: list[Problem] = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        real = path.resolve()
        if root not in real.parents:
            problems.append(Problem(entry.id, str(path), "symlink points outside instance_data_dir"))
            continue
        caption: str | None = None
        try:
            caption = _caption_for(entry, path)
        except ValueError as exc:
            problems.append(Problem(entry.id, str(path), str(exc)))
        records.append(
            Record(
                dataset_id=entry.id,
                key=path.relative_to(root).as_posix(),
                image=str(path),
                caption=caption,
                source=str(path),
            )
        )
    return records, problems


def _caption_for(entry: DatasetEntry, path: Path) -> str | None:
    strategy = entry.caption_strategy
    if strategy == "textfile":
        caption_path = path.with_suffix(".txt")
        if not caption_path.exists():
            raise ValueError(f"{caption_path}: caption file missing")
        return _read_caption_file(caption_path)
    if strategy == "filename":
        return path.stem.replace("_", " ").strip()
    if strategy == "instanceprompt":
        return entry.instance_prompt
    return None


def _dotted(row: dict[str, Any], column: str) -> Any:
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def load_hf_dataset(entry: DatasetEntry, base_dir: Path) -> Any:
    """Open `dataset_name` the way `datasets` does for a hub id, or from local files."""
    import datasets

    name = entry.dataset_name or ""
    local = resolve(name, base_dir)
    if local.is_dir() and (local / "dataset_info.json").exists():
        return datasets.load_from_disk(str(local))
    if local.is_file() and local.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(local), split=entry.split)
    target = str(local) if local.exists() else name
    return datasets.load_dataset(target, split=entry.split, revision=entry.revision)


def huggingface_records(
    entry: DatasetEntry, base_dir: Path, panels_dir: Path, recorded_dir: Path
) -> tuple[list[Record], list[Problem]]:
    """Rows as records; panels are written to `panels_dir`, recorded as under `recorded_dir`."""
    options = entry.huggingface or HuggingfaceOptions()
    dataset = load_hf_dataset(entry, base_dir)
    if options.image_column not in dataset.column_names:
        raise ConfigError(
            f"dataset '{entry.id}': image_column '{options.image_column}' not in "
            f"{entry.dataset_name} (columns: {', '.join(dataset.column_names)})"
        )
    columns = options.caption_column
    caption_columns = [columns] if isinstance(columns, str) else list(columns or [])
    if options.fallback_caption_column:
        caption_columns.append(options.fallback_caption_column)
    composite = options.composite_image_config
    panels_dir.mkdir(parents=True, exist_ok=True)
    records: list[Record] = []
    problems: list[Problem] = []
    for index, row in enumerate(dataset):
        where = f"{entry.dataset_name}[{index}]"
        caption = None
        if entry.caption_strategy == "huggingface":
            caption = next((c for c in (_dotted(row, col) for col in caption_columns) if c), None)
            if caption is None:
                problems.append(
                    Problem(entry.id, where, f"no caption in columns {', '.join(caption_columns)}")
                )
        elif entry.caption_strategy == "instanceprompt":
            caption = entry.instance_prompt
        image = row[options.image_column]
        if not isinstance(image, Image.Image):
            problems.append(Problem(entry.id, where, "image column does not hold an image"))
            continue
        image = to_rgb(image)
        if composite.enabled:
            if image.width % composite.image_count:
                problems.append(
                    Problem(
                        entry.id,
                        where,
                        f"composite width {image.width} is not divisible by image_count "
                        f"{composite.image_count}",
                    )
                )
                continue
            panel_w = image.width // composite.image_count
            left = panel_w * composite.select_index
            image = image.crop((left, 0, left + panel_w, image.height))
        image.save(panels_dir / f"{index:08d}.png")
        records.append(
            Record(
                dataset_id=entry.id,
                key=f"{index:08d}",
                image=str(recorded_dir / f"{index:08d}.png"),
                caption=caption,
                source=where,
            )
        )
    return records, problems
