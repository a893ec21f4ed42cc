"""The `local` backend: every image under `instance_data_dir`, with its caption and header size.

Files are found recursively (jpg, jpeg, png, webp, bmp, any letter case). A symlink that resolves
outside `instance_data_dir` is refused; one inside it is followed. Unreadable images become problems,
not records. A missing or non-UTF-8 caption file is reported and the record kept with caption None,
so the pre-flight report can count it and pairing may take a caption from elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from kontext_core.config import DatasetEntry
from kontext_core.data.images import IMAGE_EXTENSIONS
from kontext_core.data.records import BAD_CAPTION, MISSING_CAPTION, OUTSIDE_ROOT, UNREADABLE, Problem, Record
from kontext_core.data.scan import scan_headers


def resolve(path: str, base_dir: Path) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else base_dir / candidate


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def find_images(root: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(listed path, real path) of each image under `root`, sorted; and symlinks leaving `root`."""
    found: list[tuple[Path, Path]] = []
    outside: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in list(dirnames):
            sub = here / name
            # Symlinked folders are not walked: inside `root` they repeat files, outside they leak.
            if sub.is_symlink():
                dirnames.remove(name)
                if not _inside(sub.resolve(), root):
                    outside.append(sub)
        for name in filenames:
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = here / name
            if path.is_symlink():
                real = path.resolve()
                if not _inside(real, root):
                    outside.append(path)
                    continue
                found.append((path, real))
            else:
                found.append((path, path))
    found.sort(key=lambda item: item[0].relative_to(root).as_posix())
    return found, sorted(outside)


def _caption(entry: DatasetEntry, path: Path) -> tuple[str | None, Problem | None]:
    strategy = entry.caption_strategy
    if strategy == "textfile":
        # Problems name the image (the report lists images); the reason names the caption file.
        caption_path = path.with_suffix(".txt")
        try:
            text = caption_path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return None, Problem(entry.id, str(path), f"caption file {caption_path.name} missing", MISSING_CAPTION)
        except UnicodeDecodeError as exc:
            reason = f"caption file {caption_path.name} is not UTF-8 ({exc.reason} at byte {exc.start})"
            return None, Problem(entry.id, str(path), reason, BAD_CAPTION)
        except OSError as exc:
            reason = f"caption file {caption_path.name} unreadable: {exc.strerror or exc}"
            return None, Problem(entry.id, str(path), reason, BAD_CAPTION)
        text = text.strip()
        if not text:
            return None, Problem(entry.id, str(path), f"caption file {caption_path.name} is empty", MISSING_CAPTION)
        return text, None
    if strategy == "filename":
        return path.stem.replace("_", " ").strip(), None
    if strategy == "instanceprompt":
        return entry.instance_prompt, None
    return None, None


def local_records(
    entry: DatasetEntry, base_dir: Path, scan_cache: Path | None = None, workers: int | None = None
) -> tuple[list[Record], list[Problem]]:
    """Records and problems of a `local` entry; `scan_cache` keeps header sizes between runs."""
    root = resolve(entry.instance_data_dir or "", base_dir).resolve()
    problems: list[Problem] = []
    if not root.is_dir():
        return [], [Problem(entry.id, str(root), "instance_data_dir is not a folder", UNREADABLE)]
    found, outside = find_images(root)
    problems += [
        Problem(entry.id, str(p), "symlink points outside instance_data_dir (refused)", OUTSIDE_ROOT) for p in outside
    ]
    headers = scan_headers([real for _, real in found], scan_cache, workers=workers).headers
    records: list[Record] = []
    for path, real in found:
        width, height, reason = headers[str(real)]
        if reason is not None:
            problems.append(Problem(entry.id, str(path), reason, UNREADABLE))
            continue
        caption, caption_problem = _caption(entry, path)
        if caption_problem is not None:
            problems.append(caption_problem)
        records.append(
            Record(
                dataset_id=entry.id,
                key=path.relative_to(root).as_posix(),
                image=str(path),
                caption=caption,
                source=str(path),
                width=width,
                height=height,
            )
        )
    return records, problems
