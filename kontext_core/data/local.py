"""The `local` backend: every image under `instance_data_dir`, with its caption and header size.

Files are found recursively (jpg, jpeg, png, webp, bmp, any letter case). A symlink that resolves
outside `instance_data_dir` is refused (an `outside_root` problem, never read), and so is a caption
file linked outside it; one inside it is followed. A symlink loop is reported as unreadable.
Unreadable images become problems, not records. A missing or non-UTF-8 caption file is reported and
the record kept with caption None, so the pre-flight report can count it and pairing may take a caption from elsewhere.
A caption file above MAX_CAPTION_BYTES is a problem too, and is never read whole.

Some roots are refused before anything is listed (`refused_root`): the filesystem root, a system
folder, and any folder that contains the project (its caches and models would be read as data). The
walk never enters /proc, /sys or /dev, whatever the root.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kontext_core.config import ConfigError, DatasetEntry
from kontext_core.data.captions import uses_only_instance_prompt, with_instance_prompt
from kontext_core.data.images import IMAGE_EXTENSIONS
from kontext_core.data.records import (
    BAD_CAPTION,
    MISSING_CAPTION,
    OUTSIDE_ROOT,
    UNREADABLE,
    Problem,
    Record,
    split_records,
)
from kontext_core.data.scan import SCAN_BLOCK, HeaderScan


def resolve(path: str, base_dir: Path) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else base_dir / candidate


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


# A caption is a prompt (T5 reads 512 tokens, a few KB of text): a larger file is a mistake or an attack,
# and read whole it went into records, pairs and the text cache (10 MB: 55 s and 2.9 GB in cache_text).
MAX_CAPTION_BYTES = 64 << 10
# Folders of the machine, not of a dataset: refused as a root; the walk never enters the first three.
NEVER_ENTERED = ("/proc", "/sys", "/dev")
SYSTEM_FOLDERS = frozenset(
    {"/", *NEVER_ENTERED, "/bin", "/boot", "/etc", "/lib", "/lib64", "/run", "/sbin", "/usr", "/var", "/root", "/home"}
)


def refused_root(root: Path, project: Path) -> str | None:
    """Why `root` (resolved) may not be a dataset root, or None."""
    if str(root) in SYSTEM_FOLDERS:
        return f"{root} is {'the filesystem root' if str(root) == '/' else 'a system folder'}"
    if _inside(project.resolve(), root):
        return f"{root} contains the project ({project.resolve().name}/): its caches and models would be read as data"
    return None


@dataclass(frozen=True, slots=True)
class FoundImage:
    key: str  # posix path relative to the root: what pairing matches on
    path: str  # as listed under the root (a symlink stays a symlink)
    real: str  # the file read: the symlink's target, else `path`


def find_images(root: Path) -> tuple[list[FoundImage], list[Path], list[tuple[Path, str]]]:
    """Every image under `root` (resolved), sorted by key; the symlinks that leave `root`; and the
    folders that could not be listed, with the reason.

    Walks with `os.scandir`, whose entries know their type without a stat per file: on 10,000 files
    this is most of a warm scan's time, so strings, not Path objects, until the record is built.
    """
    found: list[FoundImage] = []
    outside: list[Path] = []
    # Keys are relative to the root whatever its spelling: "/" ends in a separator already (the key
    # of /a/b.png was "a/b.png" minus its first character).
    prefix = len(os.path.join(str(root), ""))
    stack = [str(root)]
    unlisted: list[tuple[Path, str]] = []
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            unlisted.append((Path(folder), f"folder cannot be listed: {exc.strerror or exc}"))
            continue
        for item in entries:
            if item.path in NEVER_ENTERED:
                continue
            if item.is_symlink():
                try:
                    real = os.path.realpath(item.path, strict=True)
                    is_dir = item.is_dir()
                except OSError as exc:
                    # A loop (a -> b -> a) or a dangling link: reported, never followed.
                    if item.name.lower().endswith(IMAGE_EXTENSIONS) or exc.errno == errno.ELOOP:
                        unlisted.append((Path(item.path), f"symlink cannot be resolved: {exc.strerror or exc}"))
                    continue
                if not _inside(Path(real), root):
                    if is_dir or item.name.lower().endswith(IMAGE_EXTENSIONS):
                        outside.append(Path(item.path))
                    continue
                # A symlinked folder inside the root only repeats files that are listed anyway.
                if is_dir or not item.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                found.append(FoundImage(item.path[prefix:].replace(os.sep, "/"), item.path, real))
            elif item.is_dir():
                stack.append(item.path)
            elif item.name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(FoundImage(item.path[prefix:].replace(os.sep, "/"), item.path, item.path))
    found.sort(key=lambda image: image.key)
    return found, sorted(outside), unlisted


def _caption(entry: DatasetEntry, path: str, root: Path) -> tuple[str | None, Problem | None]:
    if uses_only_instance_prompt(entry):
        return entry.instance_prompt, None  # no caption file is needed then
    caption, problem = _strategy_caption(entry, path, root)
    return with_instance_prompt(entry, caption), problem


def _strategy_caption(entry: DatasetEntry, path: str, root: Path) -> tuple[str | None, Problem | None]:
    strategy = entry.caption_strategy
    if strategy == "textfile":
        # Problems name the image (the report lists images); the reason names the caption file.
        caption_path = Path(os.path.splitext(path)[0] + ".txt")
        if caption_path.is_symlink() and not _inside(Path(os.path.realpath(caption_path)), root):
            # Never read: a caption linked to /etc/passwd would land in records, pairs and the text cache.
            reason = f"caption file {caption_path.name} is a symlink that points outside instance_data_dir (refused)"
            return None, Problem(entry.id, path, reason, OUTSIDE_ROOT)
        try:
            with open(caption_path, "rb") as fh:
                raw = fh.read(MAX_CAPTION_BYTES + 1)
            if len(raw) > MAX_CAPTION_BYTES:
                reason = f"caption file {caption_path.name} is larger than {MAX_CAPTION_BYTES >> 10} KiB (not read)"
                return None, Problem(entry.id, path, reason, BAD_CAPTION)
            text = raw.decode("utf-8")
        except FileNotFoundError:
            return None, Problem(entry.id, path, f"caption file {caption_path.name} missing", MISSING_CAPTION)
        except UnicodeDecodeError as exc:
            reason = f"caption file {caption_path.name} is not UTF-8 ({exc.reason} at byte {exc.start})"
            return None, Problem(entry.id, path, reason, BAD_CAPTION)
        except OSError as exc:
            reason = f"caption file {caption_path.name} unreadable: {exc.strerror or exc}"
            return None, Problem(entry.id, path, reason, BAD_CAPTION)
        text = text.strip()
        if not text:
            return None, Problem(entry.id, path, f"caption file {caption_path.name} is empty", MISSING_CAPTION)
        return text, None
    if strategy == "filename":
        return os.path.splitext(os.path.basename(path))[0].replace("_", " ").strip(), None
    if strategy == "instanceprompt":
        return entry.instance_prompt, None
    return None, None


def iter_local_records(
    entry: DatasetEntry, base_dir: Path, scan_cache: Path | None = None, workers: int | None = None
) -> Iterator[Record | Problem]:
    """Records (in key order) and problems of a `local` entry, one at a time; `scan_cache` keeps
    header sizes between runs.

    Only the folder's listing is held whole: headers are read a block at a time (`HeaderScan`) and
    each record is handed on as soon as it is made, so fetch's memory does not grow with the images.
    """
    root = resolve(entry.instance_data_dir or "", base_dir).resolve()
    if not root.is_dir():
        yield Problem(entry.id, str(root), "instance_data_dir is not a folder", UNREADABLE)
        return
    if reason := refused_root(root, base_dir):
        raise ConfigError(f"dataset '{entry.id}': instance_data_dir {entry.instance_data_dir!r}: {reason}; refused")
    found, outside, unlisted = find_images(root)
    for path in outside:
        yield Problem(entry.id, str(path), "symlink points outside instance_data_dir (refused)", OUTSIDE_ROOT)
    for folder, reason in unlisted:
        yield Problem(entry.id, str(folder), reason, UNREADABLE)
    with HeaderScan(scan_cache, workers=workers, desc=f"fetch {entry.id}", base=base_dir, total=len(found)) as scan:
        for start in range(0, len(found), SCAN_BLOCK):
            block = found[start : start + SCAN_BLOCK]
            headers = scan.scan([image.real for image in block])
            for image, (width, height, reason) in zip(block, headers, strict=True):
                if reason is not None:
                    yield Problem(entry.id, image.path, reason, UNREADABLE)
                    continue
                caption, caption_problem = _caption(entry, image.path, root)
                if caption_problem is not None:
                    yield caption_problem
                yield Record(
                    dataset_id=entry.id,
                    key=image.key,
                    image=image.path,
                    caption=caption,
                    source=image.path,
                    width=width,
                    height=height,
                )


def local_records(
    entry: DatasetEntry, base_dir: Path, scan_cache: Path | None = None, workers: int | None = None
) -> tuple[list[Record], list[Problem]]:
    """Records and problems of a `local` entry, as two lists (`iter_local_records` hands them on one at a time)."""
    return split_records(iter_local_records(entry, base_dir, scan_cache, workers))
