"""`kontext verify`: every stage's recorded outputs checked against its manifest, damage named per file.

Deep (the default of the command): each output's content hash is computed again and compared with
the manifest's; quick: each file's size and each safetensors header (what every skip checks). Entries
of the persistent tensor stores that no manifest lists yet are checked structurally too. A stage
without a manifest is named, not skipped: once any stage has run, a missing manifest means a stage
that never ran or a record that was removed, and either way nothing vouches for its outputs. Where
register has run, every registered version's adapter is downloaded and compared with the hashes its
version recorded (kontext_core.tracking.artifact_check); a damaged one is listed under "register".
"""

from __future__ import annotations

from pathlib import Path

from kontext_core.fsutil import safetensors_problem
from kontext_core.stages.engine import MANIFEST_DIR, output_problems, read_manifest
from kontext_core.stages.registry import STAGE_ORDER, STAGES


def verify_project(project: Path, deep: bool = True, registry: bool = True) -> dict[str, list[str]]:
    """{stage: ["path: reason", ...]} for every stage (empty list: intact); {} when no stage has run.
    With `registry`, the registered versions' adapters are checked too (under "register")."""
    project = Path(project).resolve()
    report: dict[str, list[str]] = {}
    manifests = {name: read_manifest(project, name) for name in STAGE_ORDER}
    if all(manifest is None for manifest in manifests.values()):
        return report
    for name in STAGE_ORDER:
        manifest = manifests[name]
        if manifest is None:
            report[name] = [f"{MANIFEST_DIR}/{name}.json: missing (the stage never ran, or its record was removed)"]
            continue
        problems = output_problems(name, project, manifest, deep=deep)
        listed = manifest.get("files") or {}
        for rel in STAGES[name].persist:
            root = project / rel
            if not root.is_dir():
                continue
            known = set(listed.get(rel, {}))
            for file in sorted(root.rglob("*.safetensors")):
                sub = file.relative_to(root).as_posix()
                if sub in known or any(part.startswith(".") for part in file.relative_to(root).parts):
                    continue
                if problem := safetensors_problem(file):
                    problems.append(f"{rel}/{sub}: {problem}")
        report[name] = problems
    if registry and manifests.get("register") is not None:  # a registry exists: verify opens no new store
        report["register"] += registered_problems(project)
    return report


def registered_problems(project: Path) -> list[str]:
    """The registered versions' adapters checked against the hashes recorded when each was registered."""
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from kontext_core.config import load_params
    from kontext_core.tracking.artifact_check import ArtifactMismatch
    from kontext_core.tracking.registry import download_adapter
    from kontext_core.tracking.runs import open_store

    params = load_params(project / "params.yaml")
    open_store(params, project)
    name = params.registry.model_name
    try:
        versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    problems = []
    for version in sorted(versions, key=lambda v: int(v.version)):
        uri = f"models:/{name}/{version.version}"
        with tempfile.TemporaryDirectory(prefix="kontext-verify-") as tmp:
            try:
                download_adapter(uri, Path(tmp))  # checks the files against the version's hashes
            except ArtifactMismatch as exc:
                problems.append(str(exc))
            except (MlflowException, OSError) as exc:
                problems.append(f"{uri}: its files cannot be read ({type(exc).__name__}: {exc})")
    return problems
