"""The stage engine: context, spec, fingerprint and `run_spec`, shared by every stage module.

A stage reads declared inputs (named products of upstream stages, extra inputs such as dataset
folders, a named subset of params) and writes declared outputs, then a manifest under
`artifacts/manifests/`. The manifest records the input fingerprint (hash of the params subset, the
upstream output hashes, the extra inputs and the stage's code version); if the fingerprint is
unchanged and the outputs are intact, the stage is a no-op.

The engine knows no stage: the table of stages (kontext_core.stages.registry) is passed in.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kontext_core.config import Params
from kontext_core.fsutil import (
    StorageError,
    atomic_dir,
    forget_file_hashes,
    safetensors_problem,
    sha256_file,
    sha256_json,
    sha256_tree,
    write_json,
)
from kontext_core.lifecycle import kill_point
from kontext_core.stages.code_version import code_version

log = logging.getLogger(__name__)

MANIFEST_DIR = "artifacts/manifests"


@dataclass
class StageContext:
    name: str
    params: Params
    workdir: Path
    fingerprint: str = ""
    staging: dict[str, Path] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    # "stage.product" -> project-relative path, filled from the spec's `reads`.
    inputs: dict[str, str] = field(default_factory=dict)
    # The files (size, sha256) the stage's last manifest recorded per output: what a reused entry of a
    # persistent store is checked against.
    recorded: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def path(self, rel: str) -> Path:
        return self.workdir / rel

    def input(self, product: str) -> Path:
        """The path of an upstream product this stage declared in its `reads` ("pair.pairs")."""
        if product not in self.inputs:
            raise KeyError(f"stage {self.name} reads {product!r} without declaring it; declared: {sorted(self.inputs)}")
        return self.workdir / self.inputs[product]

    def read_json(self, product: str) -> Any:
        return json.loads(self.input(product).read_text())

    def out(self, rel: str) -> Path:
        """Where to write the declared output `rel` (a staging dir, renamed on success)."""
        return self.staging.get(rel, self.workdir / rel)

    def to_stored(self, path: Path) -> str:
        """Project-relative when inside the project, so a copied project reads the same tables."""
        path = Path(path)
        try:
            return path.resolve().relative_to(self.workdir.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())

    def relative_text(self, value: Any) -> Any:
        """`value` (a string, or lists and dicts of them) with every spelling of the project's own
        path made project-relative: what reports and problem lists store, messages included."""
        if isinstance(value, dict):
            return {k: self.relative_text(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.relative_text(v) for v in value]
        if not isinstance(value, str):
            return value
        for root in dict.fromkeys((str(self.workdir.resolve()), str(self.workdir.absolute()))):
            value = value.replace(root + "/", "")
        return value

    def recorded_digests(self, rel: str) -> dict[str, str]:
        """{file stem: sha256} of the files under the project-relative folder `rel` as the stage's
        last manifest recorded them (content-addressed stores name each file by its key)."""
        digests: dict[str, str] = {}
        for out, files in self.recorded.items():
            for sub, (_, digest) in files.items():
                full = out if sub == "." else f"{out}/{sub}"
                if full.startswith(rel.rstrip("/") + "/"):
                    digests[Path(full).stem] = digest
        return digests

    def from_stored(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else self.workdir / path


ExtraInputs = Callable[[Params, Path], dict[str, Any]]


@dataclass(frozen=True)
class Artifact:
    """A report for a reviewer, published as a Prefect artifact when Prefect runs the stage (tasks/):
    `kind` "markdown" (content: text), "table" (content: rows) or "link" (content: the URL)."""

    kind: str
    key: str
    content: Any
    description: str | None = None
    link_text: str | None = None


@dataclass(frozen=True)
class StageReport:
    """What a stage's `artifacts` function reads: the stage, its project and the manifest it wrote."""

    spec: StageSpec
    workdir: Path
    manifest: dict[str, Any]
    params: Params | None = None

    @property
    def info(self) -> dict[str, Any]:
        return self.manifest.get("info") or {}

    def product(self, name: str) -> Path:
        return self.workdir / self.spec.products[name]


# A stage's reports when it really ran, and its lines in the run's closing summary (from its manifest,
# skipped or not, and the registry's metric). Either is a callable or a "module:function" reference:
# a reference is imported when used, so the stage's code version (what its module imports) does not
# hold its presentation, and rewording a report re-runs nothing.
Reporter = Callable[[StageReport], list[Artifact]]
SummaryLines = Callable[[dict[str, Any], str], list[str]]


def _resolve(ref: Any) -> Any:
    if not isinstance(ref, str):
        return ref
    import importlib

    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class StageSpec:
    """What a stage is: its body, what it reads and what it writes.

    `reads` names upstream products as "stage.product"; the upstream stages are derived from them.
    `products` names paths (inside `outs`, `persist`, `metrics` or `plots`) that later stages read.
    """

    name: str
    fn: Callable[[StageContext], None]
    params_keys: list[str]
    reads: list[str]
    outs: list[str]
    products: dict[str, str] = field(default_factory=dict)
    extra_inputs: ExtraInputs | None = None
    # Content-addressed stores that keep entries across runs instead of being replaced.
    persist: list[str] = field(default_factory=list)
    # Outputs DVC reports as metrics / plots.
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    # Params DVC watches although the fingerprint does not hash them, because an extra input holds
    # what they resolve to (`revision`: the base model's commit is in `model_inputs`).
    dvc_params: list[str] = field(default_factory=list)
    # A plot's axes for DVC (`{"x": column, "y": column}`); a CSV without them is step/loss.
    plot_axes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Roles, so that no list of stage names elsewhere says them. `accelerator`: placed on the GPU pool
    # (flows/placement.py); a function of the params when it depends on them. `mlflow`: logs into the
    # run's MLflow run (a stage group without such a stage opens none). `artifacts`, `summary`: above.
    accelerator: bool | Callable[[Params], bool] = False
    mlflow: bool = False
    artifacts: Reporter | str | None = None
    summary: SummaryLines | str | None = None

    def needs_accelerator(self, params: Params) -> bool:
        return bool(self.accelerator(params) if callable(self.accelerator) else self.accelerator)

    def reports(self, workdir: Path, manifest: dict[str, Any], params: Params | None = None) -> list[Artifact]:
        """The artifacts this stage publishes after a run that wrote `manifest` (none when it declares none)."""
        if self.artifacts is None:
            return []
        return list(_resolve(self.artifacts)(StageReport(self, Path(workdir), manifest, params)))

    def summary_lines(self, manifest: dict[str, Any], metric: str) -> list[str]:
        return [] if self.summary is None else list(_resolve(self.summary)(manifest, metric))

    @property
    def upstream(self) -> list[str]:
        return list(dict.fromkeys(read.split(".", 1)[0] for read in self.reads))

    @property
    def module(self) -> str:
        return self.fn.__module__

    def code_version(self) -> str:
        """Hash of the sources of every project module the stage's module imports (transitively)."""
        return code_version(self.module)

    def all_outs(self) -> list[str]:
        return self.outs + self.persist + self.metrics + self.plots


@dataclass(frozen=True)
class Fingerprint:
    """A stage's input fingerprint and what went into it (kept in the manifest)."""

    value: str
    material: dict[str, Any]


Specs = Mapping[str, StageSpec]


def _get_dotted(params: Params, key: str) -> Any:
    value: Any = params
    for part in key.split("."):
        value = getattr(value, part)
    return value.model_dump() if hasattr(value, "model_dump") else value


def manifest_path(workdir: Path, name: str) -> Path:
    return workdir / MANIFEST_DIR / f"{name}.json"


def read_manifest(workdir: Path, name: str) -> dict[str, Any] | None:
    path = manifest_path(workdir, name)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def params_subset(spec: StageSpec, params: Params) -> dict[str, Any]:
    return {key: _get_dotted(params, key) for key in spec.params_keys}


def resolve_reads(spec: StageSpec, specs: Specs) -> dict[str, str]:
    """Each declared read ("stage.product") mapped to its project-relative path."""
    resolved = {}
    for read in spec.reads:
        stage, _, product = read.partition(".")
        if stage not in specs or product not in specs[stage].products:
            raise RuntimeError(f"stage {spec.name} reads {read!r}, which no stage declares as a product")
        resolved[read] = specs[stage].products[product]
    return resolved


def _hash_output(path: Path) -> str:
    return sha256_tree(path) if path.exists() else "missing"


def compute_fingerprint(spec: StageSpec, specs: Specs, params: Params, workdir: Path) -> Fingerprint:
    """The input fingerprint of a stage: its code, its params subset, upstream outputs, extra inputs."""
    inputs: dict[str, Any] = {}
    for up in spec.upstream:
        manifest = read_manifest(workdir, up)
        if manifest is not None:
            inputs[up] = manifest["outputs"]
            continue
        # No manifest (e.g. outputs restored by `dvc pull`): hash the upstream outputs on disk.
        outs = specs[up].all_outs()
        missing = [rel for rel in outs if not (workdir / rel).exists()]
        if missing:
            raise RuntimeError(f"stage '{spec.name}' needs stage '{up}' to have run first ({missing[0]} is missing)")
        inputs[up] = {rel: _hash_output(workdir / rel) for rel in outs}
    if spec.extra_inputs is not None:
        inputs.update(spec.extra_inputs(params, workdir))
    material = {
        "stage": spec.name,
        "code": spec.code_version(),
        "params": params_subset(spec, params),
        "inputs": inputs,
    }
    return Fingerprint(sha256_json(material), material)


# Outputs up to this size are also re-hashed on every skip (a same-size edit of a table is caught);
# larger ones (models, caches) get the cheap checks there and the hash in `kontext verify`.
HASH_ON_SKIP_BYTES = 64 << 20


def _visible_files(path: Path) -> list[Path]:
    """The files an output's hash covers (hidden names skipped, as `sha256_tree` does)."""
    if path.is_file():
        return [path]
    files = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if not any(part.startswith(".") for part in file.relative_to(path).parts):
            files.append(file)
    return files


def output_files(workdir: Path, rels: list[str]) -> dict[str, dict[str, list[Any]]]:
    """Each output's files with [size, sha256] ("." for an output that is one file): the manifest keeps
    them so that a skip checks every file cheaply and a damaged one is named. The hashes are the ones
    the output hash was just built from (remembered per file), so listing them reads nothing again."""
    listing: dict[str, dict[str, list[Any]]] = {}
    for rel in rels:
        path = workdir / rel
        if not path.exists():
            continue
        files = [path] if path.is_file() else _visible_files(path)
        listing[rel] = {
            ("." if f == path else f.relative_to(path).as_posix()): [f.stat().st_size, sha256_file(f)] for f in files
        }
    return listing


def output_problems(name: str, workdir: Path, manifest: dict[str, Any] | None = None, deep: bool = False) -> list[str]:
    """What is wrong with a stage's recorded outputs, one "path: reason" per damaged file.

    Cheap (every skip): each output and each file the manifest lists exists with its recorded size,
    each safetensors file's header matches its length, and the files of outputs up to
    HASH_ON_SKIP_BYTES are compared with their recorded hashes (a file's hash is remembered while its
    size and mtime stay, so this costs a stat). `deep` re-reads and re-hashes every file (`kontext
    verify`). A manifest written before file listings existed is checked by its output hashes.
    """
    manifest = manifest if manifest is not None else read_manifest(workdir, name)
    if manifest is None:
        return []
    problems: list[str] = []
    listing: dict[str, dict[str, list[Any]]] | None = manifest.get("files")
    for rel, recorded_hash in manifest["outputs"].items():
        path = workdir / rel
        if recorded_hash == "missing":
            continue
        if not path.exists():
            problems.append(f"{rel}: missing")
            continue
        files = (listing or {}).get(rel)
        if files is None:
            if sha256_tree(path) != recorded_hash:
                problems.append(f"{rel}: content differs from the hash recorded when it was written")
            continue
        if deep:
            forget_file_hashes(path)
        hash_them = deep or sum(size for size, _ in files.values()) <= HASH_ON_SKIP_BYTES
        for sub, (size, digest) in files.items():
            file = path if sub == "." else path / sub
            shown = rel if sub == "." else f"{rel}/{sub}"
            if not file.is_file():
                problems.append(f"{shown}: missing")
            elif file.stat().st_size != size:
                problems.append(f"{shown}: {file.stat().st_size} bytes, {size} when written (truncated?)")
            elif file.suffix == ".safetensors" and (problem := safetensors_problem(file)):
                problems.append(f"{shown}: {problem}")
            elif hash_them and sha256_file(file) != digest:
                problems.append(f"{shown}: content differs from the hash recorded when it was written")
    return problems


def outputs_intact(name: str, workdir: Path, expected_fingerprint: str | None = None) -> bool:
    """The stage's manifest matches the fingerprint and its recorded outputs pass the cheap checks;
    a damaged output is logged by name (the stage then runs again and rewrites it)."""
    manifest = read_manifest(workdir, name)
    if manifest is None:
        return False
    if expected_fingerprint is not None and manifest["fingerprint"] != expected_fingerprint:
        return False
    problems = output_problems(name, workdir, manifest)
    if problems:
        log.warning("stage %s: damaged outputs, it runs again: %s", name, "; ".join(problems[:5]))
        return False
    return True


def _as_storage_error(name: str, spec: StageSpec, workdir: Path, exc: Exception) -> StorageError | None:
    """A full disk or a refused write as one line naming the stage and the file (or its outputs)."""
    from kontext_core.fsutil import storage_failure

    found = storage_failure(exc)
    if found is None:
        return None
    what, filename = found
    if filename:  # a hidden temp name (".NAME.PID-THREAD.tmp") stands for the file it was to become
        filename = re.sub(r"/\.([^/]+)\.[0-9-]+\.tmp$", r"/\1", filename)
    where = filename or ", ".join(spec.all_outs()) or "its outputs"
    if filename:
        try:
            where = Path(filename).resolve().relative_to(workdir.resolve()).as_posix()
        except ValueError:
            pass
    return StorageError(f"stage {name}: {what}: {where}; the stage kept nothing of this run")


def run_spec(
    spec: StageSpec,
    specs: Specs,
    params: Params,
    workdir: Path,
    force: bool = False,
    fingerprint: Fingerprint | None = None,
) -> dict[str, Any]:
    """Run one stage (or skip it when its fingerprint and outputs are unchanged); return its manifest."""
    fp = fingerprint or compute_fingerprint(spec, specs, params, workdir)
    name = spec.name
    if not force and outputs_intact(name, workdir, fp.value):
        manifest = read_manifest(workdir, name)
        assert manifest is not None
        log.info("stage %s: up to date (fingerprint %s)", name, fp.value[:12])
        return {**manifest, "skipped": True}
    log.info("stage %s: running (fingerprint %s)", name, fp.value[:12])
    previous = read_manifest(workdir, name) or {}
    ctx = StageContext(
        name=name,
        params=params,
        workdir=workdir,
        fingerprint=fp.value,
        inputs=resolve_reads(spec, specs),
        recorded={rel: files for rel, files in (previous.get("files") or {}).items() if rel in spec.persist},
    )
    started = time.time()
    staging_dirs = {}
    for rel in spec.outs:
        target = workdir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        staging_dirs[rel] = target.with_name(f".{target.name}.staging")
        shutil.rmtree(staging_dirs[rel], ignore_errors=True)
        staging_dirs[rel].mkdir(parents=True)
    ctx.staging = staging_dirs
    kill_point(name, "start")
    for rel in spec.persist + spec.metrics + spec.plots:
        (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
    try:
        spec.fn(ctx)
        kill_point(name, "before_swap")
        for rel, staging in staging_dirs.items():
            with atomic_dir(workdir / rel) as tmp:
                tmp.rmdir()
                staging.rename(tmp)
    except Exception as exc:
        storage = _as_storage_error(name, spec, workdir, exc)
        if storage is None:
            raise
        raise storage from None
    finally:
        for staging in staging_dirs.values():
            shutil.rmtree(staging, ignore_errors=True)
    kill_point(name, "after_swap")
    outputs = {rel: _hash_output(workdir / rel) for rel in spec.all_outs()}
    manifest = {
        "stage": name,
        "fingerprint": fp.value,
        "code_version": fp.material["code"],
        "params": fp.material["params"],
        "inputs": fp.material["inputs"],
        "outputs": outputs,
        "files": output_files(workdir, spec.all_outs()),
        "info": ctx.info,
        "seconds": round(time.time() - started, 3),
    }
    write_json(manifest_path(workdir, name), manifest)
    return {**manifest, "skipped": False}
