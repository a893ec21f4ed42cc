"""Lay a folder into a Hugging Face hub cache exactly as a download would have left it.

huggingface_hub keeps a repository under `<HF_HUB_CACHE>/<type>s--<org>--<name>/`:
`blobs/<etag>` holds each file's bytes once (the etag of an LFS file is the sha256 of its content,
of any other file the git blob sha1), `snapshots/<commit>/<path>` is a relative symlink to its
blob, and `refs/<branch or tag>` holds the commit a name points to. A snapshot written here is then
found by huggingface_hub's own offline resolution (`snapshot_download(local_files_only=True)`,
`HF_HUB_OFFLINE=1`), as after a real download.

The commit id is derived from the snapshot's content (paths and etags) and a message, so the same
files give the same 40-hex id in every process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from kontext_core.fsutil import atomic_path, fsync_path, write_text

REPO_TYPES = ("model", "dataset")
# Files the hub stores through git LFS: weights, sentencepiece models, parquet/arrow tables, and
# anything over the hub's 10 MB limit for plain git files.
LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".parquet", ".arrow", ".pt", ".pth", ".ckpt", ".gguf")
LFS_MIN_BYTES = 10 * 1024 * 1024


def hub_cache_dir(hf_home: Path) -> Path:
    """The hub cache under an HF_HOME (huggingface_hub's default `HF_HUB_CACHE`)."""
    return Path(hf_home) / "hub"


def repo_folder(hub_cache: Path, repo_id: str, repo_type: str = "model") -> Path:
    if repo_type not in REPO_TYPES:
        raise ValueError(f"hub repo_type: {repo_type!r} is not one of {', '.join(REPO_TYPES)}")
    return Path(hub_cache) / "--".join([f"{repo_type}s", *repo_id.split("/")])


def _is_lfs(path: Path) -> bool:
    return path.suffix in LFS_SUFFIXES or path.stat().st_size >= LFS_MIN_BYTES


def file_etag(path: Path) -> str:
    """The etag the hub serves for this file: sha256 for LFS files, the git blob sha1 otherwise."""
    from huggingface_hub.utils.sha import git_hash, sha_fileobj

    with open(path, "rb") as fh:
        if _is_lfs(path):
            return sha_fileobj(fh).hex()
        return git_hash(fh.read())


def snapshot_commit(etags: dict[str, str], message: str = "") -> str:
    """A deterministic 40-hex commit id for a snapshot's (path -> etag) listing."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(message.encode() + b"\0")
    for rel in sorted(etags):
        digest.update(f"{rel}\0{etags[rel]}\n".encode())
    return digest.hexdigest()


def set_ref(hub_cache: Path, repo_id: str, ref: str, commit: str, repo_type: str = "model") -> None:
    """Point `refs/<ref>` (a branch or tag name) at `commit`, atomically, as a download records it."""
    if not ref or ref.startswith("/") or ".." in Path(ref).parts:
        raise ValueError(f"hub ref: {ref!r} is not a branch or tag name")
    target = repo_folder(hub_cache, repo_id, repo_type) / "refs" / ref
    target.parent.mkdir(parents=True, exist_ok=True)
    # No trailing newline: huggingface_hub reads the file whole as the commit id.
    write_text(target, commit)


def _add_blob(blobs: Path, source: Path, etag: str) -> None:
    blob = blobs / etag
    if blob.exists():
        return
    with atomic_path(blob) as tmp:
        shutil.copyfile(source, tmp)


def write_snapshot(
    hub_cache: Path,
    repo_id: str,
    source: Path,
    *,
    repo_type: str = "model",
    ref: str | None = "main",
    message: str = "",
) -> str:
    """Add the files under `source` to the cache as one snapshot; point `ref` at it; return its commit.

    Blobs are shared between snapshots (content-addressed); the snapshot folder appears whole
    (built beside it and renamed), so a killed writer leaves no half snapshot behind.
    """
    source = Path(source)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"hub snapshot: {source} holds no files")
    etags = {p.relative_to(source).as_posix(): file_etag(p) for p in files}
    commit = snapshot_commit(etags, message)
    repo = repo_folder(hub_cache, repo_id, repo_type)
    blobs = repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for path in files:
        _add_blob(blobs, path, etags[path.relative_to(source).as_posix()])
    snapshot = repo / "snapshots" / commit
    if not snapshot.exists():
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{commit}.", suffix=".tmp", dir=snapshot.parent))
        try:
            for rel, etag in etags.items():
                link = tmp / rel
                link.parent.mkdir(parents=True, exist_ok=True)
                # Relative, as huggingface_hub makes them: the cache can be moved or mounted elsewhere.
                os.symlink(os.path.relpath(blobs / etag, (snapshot / rel).parent), link)
            os.replace(tmp, snapshot)
            fsync_path(snapshot.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if ref is not None:
        set_ref(hub_cache, repo_id, ref, commit, repo_type)
    return commit
