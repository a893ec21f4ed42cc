"""`kontext reproduce MODEL_URI`: rebuild a registered adapter from its lineage and compare.

Steps: read the version's run (commit, dirty flag, device, params, fingerprints, data digests);
refuse what cannot be rebuilt; check the commit out in a git worktree; write the logged params back
into its params.yaml; bring the project's data over; run the commit's stages up to `train` in a child
process; compare the adapters; name the first recorded input that no longer matches.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import mlflow
import yaml

from kontext_core.config import load_params
from kontext_core.reproduce import checkout as co
from kontext_core.reproduce.compare import compare_adapters
from kontext_core.reproduce.diagnose import data_mismatches, environment_notes, input_mismatch, library_mismatches
from kontext_core.reproduce.params import pin_hub_revision, restore
from kontext_core.reproduce.rebuild import rebuild
from kontext_core.reproduce.record import CannotReproduce, Recorded, read_lineage, registered_adapter
from kontext_core.reproduce.verdict import CANNOT, DIFFERENT, IDENTICAL, Verdict, record
from kontext_core.stages import STAGE_ORDER, STAGES
from kontext_core.tracking.environment import DEVICE_TAG, device_type
from kontext_core.tracking.lineage import BASE_MODEL_TAG
from kontext_core.tracking.runs import open_store

log = logging.getLogger(__name__)

UNTIL = "train"


def refusal(recorded: Recorded) -> str | None:
    """Why this version cannot be rebuilt here at all, before anything is checked out."""
    tags = recorded.tags
    if recorded.commit in ("", "unknown"):
        return "the run recorded no git commit (not trained from a git checkout)"
    if tags.get("git.dirty") == "true":
        changed = tags.get("git.changes", "files not recorded")
        return f"trained from a dirty tree at {recorded.commit[:12]} ({changed}); uncommitted changes are not recorded"
    device = tags.get(DEVICE_TAG, "cpu")
    if device.startswith("cuda") and not device_type().startswith("cuda"):
        return f"trained on {device}; this machine has no GPU, and CPU kernels give other numbers"
    return None


def reproduce(uri: str, params_file: Path, workdir: Path | None = None, tag: bool = True) -> Verdict:
    """The answer for `uri` (also tagged on the version unless `tag` is false)."""
    project = Path(params_file).resolve().parent
    open_store(load_params(params_file), project)  # a moved project: its store follows it
    client = mlflow.MlflowClient()
    try:
        recorded = read_lineage(uri, client)
    except CannotReproduce as exc:
        return Verdict(CANNOT, str(exc), uri)
    if (reason := refusal(recorded)) is not None:
        verdict = Verdict(CANNOT, reason, uri, recorded)
    else:
        verdict = _in_checkout(recorded, project, workdir)
    if tag:
        record(verdict, client)
    return verdict


def _in_checkout(recorded: Recorded, project: Path, workdir: Path | None) -> Verdict:
    """Rebuild in `workdir` (kept) or in a temp worktree removed afterwards."""
    try:
        if workdir is not None:
            return _rebuild_and_compare(recorded, project, Path(workdir).resolve())
        with tempfile.TemporaryDirectory(prefix="kontext-reproduce-") as tmp:
            root = Path(tmp) / "checkout"
            try:
                return _rebuild_and_compare(recorded, project, root)
            finally:
                co.remove_worktree(project, root)
    except CannotReproduce as exc:
        return Verdict(CANNOT, str(exc), recorded.uri, recorded)


def _rebuild_and_compare(recorded: Recorded, project: Path, root: Path) -> Verdict:
    started = time.time()
    registered = registered_adapter(recorded)
    here = co.checkout(project, recorded.commit, root)
    params_path = here / "params.yaml"
    if not params_path.exists():
        raise CannotReproduce(f"commit {recorded.commit[:12]} has no params.yaml in {here.relative_to(root)}")
    logged = pin_hub_revision(recorded.params, recorded.tags.get(BASE_MODEL_TAG))
    restored, overrides = restore(yaml.safe_load(params_path.read_text()) or {}, logged)
    params_path.write_text(yaml.safe_dump(restored, sort_keys=False))
    # Stages that read nothing but params (init: the tiny model and the sample data) generate source
    # data: brought over from the project when it has them, so the data the run used is checked.
    sources = [s for s in STAGES.values() if not s.upstream and s.extra_inputs is None]
    generated = [rel for spec in sources for rel in spec.all_outs()]
    co.bring_data(project, here, co.data_paths(restored, here, project, generated))
    brought = [s.name for s in sources if all((project / rel).exists() for rel in s.all_outs())]
    log.info("rebuilding %s at %s in %s", recorded.uri, recorded.commit[:12], root)
    cpu_only = not recorded.tags.get(DEVICE_TAG, "cpu").startswith("cuda")
    result = rebuild(root, here, logged, UNTIL, cpu_only, brought)
    comparison = compare_adapters(registered, here / STAGES[UNTIL].products["adapter"])
    stages = STAGE_ORDER[: STAGE_ORDER.index(UNTIL) + 1]
    inputs = [f"params key {k} could not be restored as logged" for k in result["params_mismatch"] or []]
    inputs += data_mismatches(recorded, here)
    if cause := input_mismatch(recorded, here, project, stages):
        inputs.append(cause)
    libraries = [f"library versions: {m}" for m in library_mismatches(recorded)]
    notes = environment_notes(recorded)
    if comparison.identical and not inputs:
        answer, reason = IDENTICAL, ""
        notes += libraries  # the bytes match even so
    else:
        causes = inputs + libraries
        answer = DIFFERENT
        reason = causes[0] if causes else "the rebuilt adapter differs although every recorded input matches"
        if comparison.identical:
            notes.append("the rebuilt adapter is byte-identical even so")
    return Verdict(
        answer, reason, recorded.uri, recorded, comparison, overrides, notes, result["ran"], time.time() - started
    )
