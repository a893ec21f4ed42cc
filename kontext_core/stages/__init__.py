"""The pipeline stages: the one implementation that Prefect tasks and `kontext stage` both call.

`engine` runs any stage; each stage lives in its own module (body, spec, path constants);
`registry` lists them in order. See docs/architecture.md.
"""

from kontext_core.stages.engine import (
    MANIFEST_DIR,
    Fingerprint,
    StageContext,
    StageSpec,
    manifest_path,
    outputs_intact,
    read_manifest,
)
from kontext_core.stages.fetch import DATASET_HASH_DIR, SCAN_CACHE_DIR
from kontext_core.stages.init import SAMPLE_DATA_DIR, TINY_MODEL_DIR
from kontext_core.stages.registry import STAGE_ORDER, STAGES, fingerprint, run_stage

__all__ = [
    "DATASET_HASH_DIR",
    "MANIFEST_DIR",
    "SAMPLE_DATA_DIR",
    "SCAN_CACHE_DIR",
    "STAGES",
    "STAGE_ORDER",
    "TINY_MODEL_DIR",
    "Fingerprint",
    "StageContext",
    "StageSpec",
    "fingerprint",
    "manifest_path",
    "outputs_intact",
    "read_manifest",
    "run_stage",
]
