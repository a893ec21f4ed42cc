"""A hub id is the commit it resolves to.

`revision` may be a commit, a branch or a tag. Offline (`HF_HUB_OFFLINE=1`) the answer comes from
the local cache only, through huggingface_hub's own resolution (`refs/<name>` -> commit ->
`snapshots/<commit>/`); online, the hub says which commit a branch or tag names now, and the cache
is used when the hub cannot be reached. Fingerprints, lineage tags and the registry record the
commit, so moving `refs/main` to another snapshot is a change of input like any other.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kontext_core.config import ConfigError

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubSnapshot:
    repo_id: str
    repo_type: str
    revision: str  # as the params name it (a branch, a tag or a commit)
    commit: str
    path: Path | None  # the snapshot folder in the local cache; None when only the hub has it

    def identity(self) -> dict[str, str]:
        """What a fingerprint or a tag records: the id and the commit (never `main`)."""
        return {"hub_id": self.repo_id, "commit": self.commit}


def offline() -> bool:
    """Read at call time (huggingface_hub reads its constants once, at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def hub_cache() -> Path:
    """HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default; read at call time."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _not_cached(repo_id: str, repo_type: str, revision: str, why: str) -> ConfigError:
    kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
    home = os.environ.get("HF_HOME") or str(hub_cache().parent)
    return ConfigError(
        f"{repo_type} '{repo_id}' (revision '{revision}') is not in the Hugging Face cache under HF_HOME={home}"
        f" ({why}); download it first with `hf download{kind} {repo_id} --revision {revision}`"
        " (same HF_HOME), or point HF_HOME at the cache that holds it"
    )


def _from_cache(repo_id: str, repo_type: str, revision: str, cache: Path) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(repo_id, repo_type=repo_type, revision=revision, cache_dir=cache, local_files_only=True)
        )
    except LocalEntryNotFoundError:
        return None


def _from_hub(repo_id: str, repo_type: str, revision: str) -> str | None:
    """The commit the hub names for `revision` now; None when the hub cannot be reached."""
    from huggingface_hub import HfApi

    try:
        return HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision).sha
    except Exception as exc:  # no network, a proxy, an HTTP error: whatever it is, the cache decides
        log.info(
            "%s '%s' (revision '%s'): no answer from the hub (%s); the cache decides", repo_type, repo_id, revision, exc
        )
        return None


def resolve(repo_id: str, revision: str | None = None, repo_type: str = "model") -> HubSnapshot:
    """The commit `repo_id` at `revision` (default `main`) resolves to, and its cached snapshot.

    Offline and not in the cache: a ConfigError of one line naming the id, HF_HOME and how to
    download it.
    """
    revision = revision or "main"
    cache = hub_cache()
    commit = None if offline() else _from_hub(repo_id, repo_type, revision)
    path = _from_cache(repo_id, repo_type, commit or revision, cache)
    if commit is None:
        if path is None:
            why = "HF_HUB_OFFLINE is set" if offline() else "the hub could not be reached"
            raise _not_cached(repo_id, repo_type, revision, why)
        commit = path.name
    if not _COMMIT.match(commit):
        raise ConfigError(f"{repo_type} '{repo_id}' (revision '{revision}'): resolved to {commit!r}, not a commit id")
    return HubSnapshot(repo_id, repo_type, revision, commit, path)
