"""Run the reference generators over many images: content-addressed, resumable, in parallel.

Each output is written atomically to `persist_dir/<aa>/<key>.png`, where the key hashes the source
image's content, the generator parameters, the seed and the file key. Outputs already there are
reused, so a run killed half-way resumes with the images it has not made yet.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kontext_core.config import ConditioningGenerator
from kontext_core.data.backends import backends_state, restore_backends_state
from kontext_core.data.degrade import degrade, generated_key
from kontext_core.data.sources import open_verified, ref_digest
from kontext_core.fsutil import atomic_path
from kontext_core.progress import progress

log = logging.getLogger(__name__)

# Below this many images a process pool costs more (interpreter start-up) than it saves.
PARALLEL_MIN_JOBS = 16


@dataclass(frozen=True)
class GenerationJob:
    source: str  # image reference of the edit image
    spec_json: str  # the generator's parameters, as JSON (keeps the job hashable)
    key: str  # the record key (pairs the output with its edit image)
    # The source's digest as fetch recorded it (the pair table carries it); None: asked of its backend.
    source_digest: str | None = None

    @staticmethod
    def make(source: str, spec: dict[str, Any], key: str, source_digest: str | None = None) -> GenerationJob:
        return GenerationJob(source, json.dumps(spec, sort_keys=True), key, source_digest)

    @property
    def generator(self) -> ConditioningGenerator:
        return ConditioningGenerator.model_validate(json.loads(self.spec_json))


def output_path(job: GenerationJob, persist_dir: Path, workdir: Path, seed: int) -> Path:
    digest = generated_key(ref_digest(job.source, workdir, job.source_digest), job.generator, seed, job.key)
    return persist_dir / digest[:2] / f"{digest}.png"


def _generate_one(job: GenerationJob, dest: str, workdir: str, seed: int) -> str:
    # Stored under a key made from the recorded digest: the source must still have it.
    img = degrade(open_verified(job.source, Path(workdir), job.source_digest), job.generator, seed, job.key)
    with atomic_path(Path(dest)) as tmp:
        img.save(tmp, format="PNG")
    return dest


def _intact(dest: Path) -> bool:
    """An existing entry whose PNG checks whole (chunk CRCs, no truncation); a damaged one is removed
    so that it is generated again, never reused."""
    if not dest.exists():
        return False
    from PIL import Image

    try:
        with Image.open(dest) as img:
            img.verify()
        return True
    except Exception as exc:  # PIL raises OSError, SyntaxError, struct errors... for a damaged file
        log.warning("damaged generated reference %s (%s): removed, it is generated again", dest, exc)
        dest.unlink(missing_ok=True)
        return False


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def generate_references(
    jobs: list[GenerationJob], workdir: Path, seed: int, persist_dir: Path, workers: int | None = None
) -> tuple[dict[GenerationJob, Path], int]:
    """Make every job's image unless it exists; return {job: file} and how many were made now."""
    outputs = {job: output_path(job, persist_dir, workdir, seed) for job in jobs}
    todo = [(job, dest) for job, dest in outputs.items() if not _intact(dest)]
    workers = default_workers() if workers is None else workers
    with progress(len(todo), "degrade", "image") as bar:
        if workers > 1 and len(todo) >= min(PARALLEL_MIN_JOBS, 2 * workers):
            # spawn, not fork: the parent may hold threads (Prefect) or torch state that fork would copy.
            context = multiprocessing.get_context("spawn")
            # Workers learn how to reach remote stores (an aws entry's endpoint and keys) from the parent.
            with ProcessPoolExecutor(
                max_workers=min(workers, len(todo)),
                mp_context=context,
                initializer=restore_backends_state,
                initargs=(backends_state(),),
            ) as pool:
                futures = [pool.submit(_generate_one, job, str(dest), str(workdir), seed) for job, dest in todo]
                for future in futures:
                    future.result()
                    bar.update()
        else:
            for job, dest in todo:
                _generate_one(job, str(dest), str(workdir), seed)
                bar.update()
    return outputs, len(todo)
