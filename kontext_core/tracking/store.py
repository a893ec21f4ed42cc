"""Which MLflow store a project uses, and pointing this process at it."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

from kontext_core.config import Params


def tracking_uri(params: Params, workdir: Path) -> str:
    """MLFLOW_TRACKING_URI wins; a relative SQLite path is made relative to the project."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str((workdir / uri[len(prefix) :]).resolve())
    return uri


def use_store(uri: str) -> None:
    """Point this process's mlflow client at `uri` without exporting it.

    `mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI into the environment, which would
    then override the next project's params.yaml in the same process; the variable is restored.
    """
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def project_sqlite_file(uri: str, workdir: Path) -> Path | None:
    """The SQLite file of `uri` when it lives inside the project (it moves and copies with it)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = Path(uri[len(prefix) :])
    try:
        path.resolve().relative_to(Path(workdir).resolve())
    except ValueError:
        return None
    return path


def relocate_artifacts(uri: str, workdir: Path, old: str, new: str) -> int:
    """Rewrite the artifact locations recorded in the project's own SQLite store from `old` (where the
    project's `mlruns` was) to `new` (where it is now): after the project was moved or copied, its
    runs and models load from its own `mlruns` and a copy never writes into the original's.

    Only for a store inside the project and locations under `old`; returns the number of rows changed.
    """
    import sqlite3

    db = project_sqlite_file(uri, workdir)
    if db is None or not db.exists() or not old or old == new:
        return 0
    changed = 0
    with sqlite3.connect(db, timeout=30) as con:
        tables = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [row[1] for row in con.execute(f"PRAGMA table_info('{table}')")]
            for column in columns:
                if not any(word in column.lower() for word in ("location", "uri", "source")):
                    continue
                cur = con.execute(
                    f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '
                    f'WHERE "{column}" = ? OR substr("{column}", 1, ?) = ?',
                    (new, len(old) + 1, old, len(old) + 1, old + "/"),
                )
                changed += cur.rowcount
    return changed
