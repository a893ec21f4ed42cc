"""A registered adapter is checked against the hashes its version recorded, wherever it is loaded.

`kontext edit`, `kontext reproduce`, `kontext export` and the champion's re-scoring before a promotion
all download a version's adapter through `registry.download_adapter`, which calls `check_registered`;
the pyfunc model checks its own copy in `load_context` against the hashes logged in its model config.
A file whose bytes differ (a flipped byte in `mlruns/…`), or that is missing, is refused in one line
naming it: the registry's copy is the one thing that is served, so it is never trusted blindly.

What is compared: the version's `kontext.adapter_sha256` tag (the adapter folder's tree hash, set when
the version was created) and, where present, `kontext.adapter_files` (each file's sha256), which names
the damaged file among several.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kontext_core.fsutil import forget_file_hashes, sha256_file, sha256_tree

ADAPTER_HASH_TAG = "kontext.adapter_sha256"
ADAPTER_FILES_TAG = "kontext.adapter_files"


class ArtifactMismatch(ValueError):
    """A registered file's bytes differ from the ones recorded when it was registered (a ValueError:
    the commands that load a model already print those as one line)."""


def file_hashes(adapter_dir: Path) -> dict[str, str]:
    """{relative path: sha256} of the adapter folder's visible files (what the tree hash covers)."""
    adapter_dir = Path(adapter_dir)
    return {
        f.relative_to(adapter_dir).as_posix(): sha256_file(f)
        for f in sorted(adapter_dir.rglob("*"))
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(adapter_dir).parts)
    }


def check_adapter(adapter_dir: Path, tree_hash: str | None, files: dict[str, str] | None, what: str) -> None:
    """Raise ArtifactMismatch naming the first differing file unless the folder matches what was recorded;
    nothing recorded (a version registered before the tags existed) is nothing to check."""
    if not tree_hash and not files:
        return
    adapter_dir = Path(adapter_dir)
    forget_file_hashes(adapter_dir)  # the bytes on disk now, not a hash remembered from before
    actual = file_hashes(adapter_dir)
    if files:
        for name, digest in sorted(files.items()):
            if name not in actual:
                raise ArtifactMismatch(f"{what}: {adapter_dir.name}/{name} is missing from its files; refused")
            if actual[name] != digest:
                raise ArtifactMismatch(
                    f"{what}: {adapter_dir.name}/{name} differs from the file registered (sha256 {digest[:12]}…, "
                    f"now {actual[name][:12]}…); refused: restore it or register the adapter again"
                )
    if tree_hash and sha256_tree(adapter_dir) != tree_hash:
        shown = ", ".join(f"{adapter_dir.name}/{name}" for name in actual) or f"{adapter_dir.name}/ (empty)"
        raise ArtifactMismatch(
            f"{what}: {shown} differs from the adapter registered ({ADAPTER_HASH_TAG} {tree_hash[:12]}…); "
            "refused: restore it or register the adapter again"
        )


def registered_version(model_uri: str, client: Any | None = None) -> Any | None:
    """The model version a models:/NAME/N or models:/NAME@ALIAS URI names (None for other URIs)."""
    if not model_uri.startswith("models:/"):
        return None
    import mlflow

    client = client or mlflow.MlflowClient()
    rest = model_uri[len("models:/") :].rstrip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, number = rest.partition("/")
    if not number.isdigit():
        return None
    return client.get_model_version(name, number)


def check_registered(model_uri: str, adapter_dir: Path, client: Any | None = None) -> None:
    """Check a downloaded adapter against its version's recorded hashes (models:/ URIs only)."""
    version = registered_version(model_uri, client)
    if version is None:
        return
    tags = version.tags or {}
    files = json.loads(tags[ADAPTER_FILES_TAG]) if tags.get(ADAPTER_FILES_TAG) else None
    what = f"{model_uri} (version {version.version} of {version.name})"
    check_adapter(adapter_dir, tags.get(ADAPTER_HASH_TAG), files, what)
