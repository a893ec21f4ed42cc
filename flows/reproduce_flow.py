"""The `kontext-reproduce` flow: rebuild a registered adapter from its lineage, publish the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from kontext_core.reproduce import reproduce


@flow(name="kontext-reproduce")
def kontext_reproduce(
    model_uri: str = "models:/kontext-lora@champion", params_file: str = "params.yaml", workdir: str | None = None
) -> dict[str, Any]:
    """identical / different / cannot reproduce for `model_uri`: a tag on the version and an artifact."""
    logger = get_run_logger()
    verdict = reproduce(model_uri, Path(params_file), Path(workdir) if workdir else None)
    for line in verdict.lines():
        logger.info(line)
    create_markdown_artifact(
        verdict.markdown(), key="kontext-reproduce", description=f"reproduction of {model_uri}: {verdict.answer}"
    )
    comparison = verdict.comparison
    return {
        "answer": verdict.answer,
        "reason": verdict.reason,
        "model_uri": model_uri,
        "run_id": verdict.recorded.run_id if verdict.recorded else None,
        "registered_sha256": comparison.registered_sha256 if comparison else None,
        "rebuilt_sha256": comparison.rebuilt_sha256 if comparison else None,
        "max_abs_diff": comparison.max_abs_diff if comparison else None,
    }
