"""Prefect artifacts a reviewer reads. What a stage shows is its spec's `artifacts` function
(kontext_core.stages.views for the built-in stages: the pre-flight report, training, validation base
vs LoRA with the grids, the registered version and its link); this module only publishes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from kontext_core.config import Params
from kontext_core.stages import STAGES
from kontext_core.stages.engine import Artifact


def publish(artifact: Artifact) -> None:
    if artifact.kind == "markdown":
        create_markdown_artifact(artifact.content, key=artifact.key, description=artifact.description)
    elif artifact.kind == "table":
        create_table_artifact(artifact.content, key=artifact.key, description=artifact.description)
    elif artifact.kind == "link":
        create_link_artifact(
            artifact.content, link_text=artifact.link_text, key=artifact.key, description=artifact.description
        )
    else:
        raise ValueError(f"artifact {artifact.key!r}: unknown kind {artifact.kind!r}; allowed: markdown, table, link")


def publish_artifacts(name: str, workdir: Path, manifest: dict[str, Any], params: Params | None = None) -> None:
    """The artifacts of a stage that really ran (a skipped stage published its own when it ran)."""
    for artifact in STAGES[name].reports(Path(workdir), manifest, params):
        publish(artifact)
