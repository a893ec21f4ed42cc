"""The pipeline stages: the one implementation that Prefect tasks and `kontext stage` both call.

Each stage reads declared inputs (upstream stages' outputs, files, a named subset of params) and
writes declared outputs, then a manifest under `artifacts/manifests/`. The manifest records the
input fingerprint (hash of the params subset, the input content hashes and the stage's code); if
the fingerprint is unchanged and the outputs are intact, the stage is a no-op.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kontext_core.config import ConfigError, DatasetConfig, Params, load_params
from kontext_core.fsutil import atomic_dir, sha256_file, sha256_json, sha256_tree, write_json, write_text

log = logging.getLogger(__name__)

MANIFEST_DIR = "artifacts/manifests"
TINY_MODEL_DIR = "models/tiny-kontext"
SAMPLE_DATA_DIR = "data/samples"
TRAIN_METRICS = "artifacts/metrics/train.json"
VALIDATE_METRICS = "artifacts/metrics/validate.json"
LOSS_PLOT = "artifacts/plots/train_loss.csv"
SCAN_CACHE_DIR = "cache/scan"
DATASET_HASH_DIR = "cache/hashes/datasets"
DEGRADE_CACHE_DIR = "cache/degrade"
# Where a failed pair stage leaves its report (its declared outputs are discarded on failure).
PREFLIGHT_FAILED_DIR = "artifacts/preflight_failed"


# ----------------------------------------------------------------------------------------------
# the stage context and manifest


@dataclass
class StageContext:
    name: str
    params: Params
    workdir: Path
    fingerprint: str = ""
    staging: dict[str, Path] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def tag_run(self, run_id: str) -> None:
        """Tag the MLflow run with every stage fingerprint so far, this one included."""
        from kontext_core.tracking.lineage import lineage_tags
        from kontext_core.tracking.runs import set_tags

        set_tags(run_id, {**lineage_tags(self.workdir), f"kontext.fingerprint.{self.name}": self.fingerprint})

    def path(self, rel: str) -> Path:
        return self.workdir / rel

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

    def from_stored(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else self.workdir / path

    def open_image(self, stored: str):
        """RGB pixels of an image reference kept in a table (see kontext_core.data.sources)."""
        from kontext_core.data.sources import open_ref

        return open_ref(stored, self.workdir)


@dataclass
class StageSpec:
    name: str
    fn: Callable[[StageContext], None]
    params_keys: list[str]
    upstream: list[str]
    outs: list[str]
    modules: list[str]
    extra_inputs: Callable[[Params, Path], dict[str, Any]] | None = None
    # Content-addressed stores that keep entries across runs instead of being replaced.
    persist: list[str] = field(default_factory=list)
    # Outputs DVC reports as metrics / plots (never cached by DVC).
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)

    def code_version(self) -> str:
        """Hash of the stage function and its modules' source, read without importing them."""
        digest = hashlib.sha256()
        for module_name in sorted(set(self.modules)):
            spec = importlib.util.find_spec(module_name)
            if spec is None or spec.origin is None:
                raise RuntimeError(f"stage {self.name}: module {module_name} not found")
            digest.update(Path(spec.origin).read_bytes())
        digest.update(inspect.getsource(self.fn).encode())
        return digest.hexdigest()[:16]

    def all_outs(self) -> list[str]:
        return self.outs + self.persist + self.metrics + self.plots


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


def fingerprint(name: str, params: Params, workdir: Path) -> tuple[str, dict[str, Any]]:
    """The input fingerprint of a stage and what went into it."""
    spec = STAGES[name]
    inputs: dict[str, Any] = {}
    for up in spec.upstream:
        manifest = read_manifest(workdir, up)
        if manifest is not None:
            inputs[up] = manifest["outputs"]
            continue
        # No manifest (e.g. outputs restored by `dvc pull`): hash the upstream outputs on disk.
        outs = STAGES[up].all_outs()
        missing = [rel for rel in outs if not (workdir / rel).exists()]
        if missing:
            raise RuntimeError(f"stage '{name}' needs stage '{up}' to have run first ({missing[0]} is missing)")
        inputs[up] = {rel: _hash_output(workdir / rel) for rel in outs}
    if spec.extra_inputs is not None:
        inputs.update(spec.extra_inputs(params, workdir))
    material = {
        "stage": name,
        "code": spec.code_version(),
        "params": params_subset(spec, params),
        "inputs": inputs,
    }
    return sha256_json(material), material


def outputs_intact(name: str, workdir: Path, expected_fingerprint: str | None = None) -> bool:
    manifest = read_manifest(workdir, name)
    if manifest is None:
        return False
    if expected_fingerprint is not None and manifest["fingerprint"] != expected_fingerprint:
        return False
    return all((workdir / rel).exists() for rel in manifest["outputs"])


def _hash_output(path: Path) -> str:
    return sha256_tree(path) if path.exists() else "missing"


def run_stage(
    name: str, params_file: Path | str, workdir: Path | str | None = None, force: bool = False
) -> dict[str, Any]:
    """Run stage `name` (or skip it when its fingerprint and outputs are unchanged)."""
    params_file = Path(params_file).resolve()
    workdir = Path(workdir).resolve() if workdir else params_file.parent
    params = load_params(params_file)
    spec = STAGES[name]
    fp, material = fingerprint(name, params, workdir)
    if not force and outputs_intact(name, workdir, fp):
        manifest = read_manifest(workdir, name)
        assert manifest is not None
        log.info("stage %s: up to date (fingerprint %s)", name, fp[:12])
        return {**manifest, "skipped": True}
    log.info("stage %s: running (fingerprint %s)", name, fp[:12])
    ctx = StageContext(name=name, params=params, workdir=workdir, fingerprint=fp)
    started = time.time()
    staging_dirs = {}
    for rel in spec.outs:
        target = workdir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        staging_dirs[rel] = target.with_name(f".{target.name}.staging")
        shutil.rmtree(staging_dirs[rel], ignore_errors=True)
        staging_dirs[rel].mkdir(parents=True)
    ctx.staging = staging_dirs
    for rel in spec.persist + spec.metrics + spec.plots:
        (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
    try:
        spec.fn(ctx)
        for rel, staging in staging_dirs.items():
            with atomic_dir(workdir / rel) as tmp:
                tmp.rmdir()
                staging.rename(tmp)
    finally:
        for staging in staging_dirs.values():
            shutil.rmtree(staging, ignore_errors=True)
    outputs = {rel: _hash_output(workdir / rel) for rel in spec.all_outs()}
    manifest = {
        "stage": name,
        "fingerprint": fp,
        "code_version": material["code"],
        "params": material["params"],
        "inputs": material["inputs"],
        "outputs": outputs,
        "info": ctx.info,
        "seconds": round(time.time() - started, 3),
    }
    write_json(manifest_path(workdir, name), manifest)
    return {**manifest, "skipped": False}


# ----------------------------------------------------------------------------------------------
# helpers shared by the stages


def _datasets(ctx: StageContext) -> DatasetConfig:
    from kontext_core.config import check_datasets_with_params, load_datasets

    data_path = Path(ctx.params.data_backend_config)
    if not data_path.is_absolute():
        data_path = ctx.workdir / data_path
    datasets = load_datasets(data_path, base_dir=ctx.workdir)
    check_datasets_with_params(ctx.params, datasets, "params")
    return datasets


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _dataset_file_input(params: Params, workdir: Path) -> dict[str, Any]:
    """The dataset file's content: pairing and crop keys change pairs without changing fetch's records."""
    data_path = Path(params.data_backend_config)
    return {"data_backend_config": sha256_file(data_path if data_path.is_absolute() else workdir / data_path)}


def _dataset_inputs(params: Params, workdir: Path) -> dict[str, Any]:
    """Content of the dataset file and of every local folder or file it points at (hub ids by name).

    File hashes are remembered under cache/hashes/datasets by (path, size, mtime): a new process
    fingerprints an unchanged dataset with a stat per file instead of reading every image again.
    That memo is no stage's output (it changes whenever a fingerprint is taken), unlike cache/scan.
    """
    from kontext_core.config import load_datasets
    from kontext_core.data.scan import folder_digest

    data_path = Path(params.data_backend_config)
    if not data_path.is_absolute():
        data_path = workdir / data_path
    hashes: dict[str, Any] = {"data_backend_config": sha256_file(data_path)}
    for entry in load_datasets(data_path, base_dir=workdir).enabled():
        location = entry.instance_data_dir if entry.type == "local" else entry.dataset_name
        if not location or entry.dataset_type == "text_embeds":
            continue
        local = Path(location).expanduser()
        local = local if local.is_absolute() else workdir / local
        if local.exists():
            hashes[f"dataset:{entry.id}"] = folder_digest(local, workdir / DATASET_HASH_DIR / f"{entry.id}.json")
        elif entry.type == "huggingface":
            # A hub id: the fingerprint names what to download, and fetch downloads it (never this).
            hashes[f"dataset:{entry.id}"] = {
                "hub": entry.dataset_name,
                "split": entry.split,
                "revision": entry.revision,
            }
        else:
            hashes[f"dataset:{entry.id}"] = "missing"
    return hashes


def _model_inputs(params: Params, workdir: Path) -> dict[str, Any]:
    from kontext_core.model.source import model_fingerprint

    return {"base_model": model_fingerprint(params, workdir)}


# Adapter keys of the train stage (kontext_core.model.adapters / .lycoris).
def _adapter_inputs(params: Params, workdir: Path) -> dict[str, Any]:
    """The LyCORIS config's content (only read when lora_type is lycoris)."""
    if params.lora_type != "lycoris":
        return {}
    path = Path(params.lycoris_config)
    path = path if path.is_absolute() else workdir / path
    if not path.exists():
        raise ConfigError(f"lycoris_config = {params.lycoris_config!r}: file not found ({path})")
    return {"lycoris_config": sha256_file(path)}


# ----------------------------------------------------------------------------------------------
# the stages


def stage_init(ctx: StageContext) -> None:
    """Build the embedded tiny model and the sample data (both offline and deterministic)."""
    from kontext_core.data.samples import write_sample_data
    from kontext_core.model.tiny import build_tiny_pipeline

    p = ctx.params
    pipe = build_tiny_pipeline(seed=p.tiny_model.seed)
    pipe.save_pretrained(ctx.out(TINY_MODEL_DIR), safe_serialization=True)
    samples = ctx.out(SAMPLE_DATA_DIR)
    samples.rmdir()
    write_sample_data(samples, count=p.sample_data.count, size=p.sample_data.size, seed=p.sample_data.seed)


def stage_fetch(ctx: StageContext) -> None:
    """Normalised records per dataset: image reference, caption, key and header size; problems beside."""
    from kontext_core.data.backends import entry_records

    datasets = _datasets(ctx)
    out = ctx.out("data/fetch")
    scan_cache = ctx.path(SCAN_CACHE_DIR)
    scan_cache.mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict]] = {}
    problems: list[dict] = []
    for entry in datasets.enabled():
        if entry.dataset_type == "text_embeds":
            continue
        recs, probs = entry_records(entry, ctx.workdir, scan_cache)
        for rec in recs:
            if not rec.image.startswith("hf:"):
                rec.image = ctx.to_stored(Path(rec.image))
        records[entry.id] = [r.to_dict() for r in recs]
        problems += [p.to_dict() for p in probs]
        log.info("fetch %s: %d records, %d problems", entry.id, len(recs), len(probs))
    # Drop caches of datasets no longer configured, so the persisted store does not grow forever.
    for stale in [*scan_cache.glob("*.json"), *ctx.path(DATASET_HASH_DIR).glob("*.json")]:
        if stale.stem not in records:
            stale.unlink()
    write_json(out / "records.json", {"records": records, "problems": problems})
    ctx.info["records"] = {k: len(v) for k, v in records.items()}
    ctx.info["problems"] = len(problems)


def stage_pair(ctx: StageContext) -> None:
    """The pair table (edit <-> references <-> caption, bucket, crop plans) and the pre-flight report."""
    from kontext_core.data.pairing import build_pairs
    from kontext_core.data.records import Problem, Record

    datasets = _datasets(ctx)
    fetched = _read_json(ctx.path("data/fetch/records.json"))
    records = {k: [Record(**r) for r in v] for k, v in fetched["records"].items()}
    problems = [Problem(**p) for p in fetched["problems"]]
    pairs, report = build_pairs(ctx.params, datasets, records, problems, from_stored=ctx.from_stored)
    out = ctx.out("data/pair")
    write_json(out / "pairs.json", pairs)
    write_json(out / "report.json", report.to_dict())
    write_text(out / "report.md", report.to_markdown())
    train_pairs = sum(p["split"] == "train" for p in pairs)
    if report.failures or not train_pairs:
        # The staged outputs are discarded on failure: keep the report where the message points.
        failed = ctx.path(PREFLIGHT_FAILED_DIR)
        write_json(failed / "report.json", report.to_dict())
        write_text(failed / "report.md", report.to_markdown())
        what = "no usable training pairs" if not train_pairs else "pre-flight check failed"
        reasons = "; ".join(report.failures) or "no training dataset"
        raise RuntimeError(f"pair: {what}: {reasons}; see {failed / 'report.md'}")
    shutil.rmtree(ctx.path(PREFLIGHT_FAILED_DIR), ignore_errors=True)
    ctx.info["pairs"] = {"train": train_pairs, "eval": sum(p["split"] == "eval" for p in pairs)}
    ctx.info["problems"] = len(report.problems)


def stage_degrade(ctx: StageContext) -> None:
    """Generate the references of `conditioning: [...]` sets (content-addressed, resumable, parallel)."""
    from kontext_core.data.generators import GenerationJob, generate_references
    from kontext_core.data.pairing import DEGRADE_DIR

    pairs = _read_json(ctx.path("data/pair/pairs.json"))
    wanted: dict[str, GenerationJob] = {}
    for pair in pairs:
        for ref in pair["references"]:
            if ref["generated"]:
                spec = {k: v for k, v in ref["generated"].items() if k != "source"}
                wanted[ref["image"]] = GenerationJob.make(ref["generated"]["source"], spec, pair["key"])
    files, made = generate_references(
        sorted(set(wanted.values()), key=lambda j: (j.source, j.spec_json)),
        ctx.workdir,
        ctx.params.seed,
        ctx.path(DEGRADE_CACHE_DIR),
    )
    out = ctx.out(DEGRADE_DIR)
    for rel, job in sorted(wanted.items()):
        dest = out / Path(rel).relative_to(DEGRADE_DIR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(files[job], dest)
        except OSError:
            shutil.copyfile(files[job], dest)
    ctx.info.update({"generated": made, "reused": len(wanted) - made})


def _vae_key(ctx: StageContext, image: str, plan: dict[str, Any], model_fp: Any) -> str:
    from kontext_core.cache.store import TensorStore
    from kontext_core.data.sources import ref_digest

    return TensorStore.key(image=ref_digest(image, ctx.workdir), crop=plan, vae=model_fp)


def _crop_of(item: dict[str, Any]) -> dict[str, Any]:
    """The crop plan of a pair-table image (tables without plans: centre crop to its size)."""
    return item.get("crop") or {"size": item["size"], "centre": True}


def stage_cache_vae(ctx: StageContext) -> None:
    """VAE latents of every target and reference, cropped by their plans, content-addressed under cache/vae."""
    import torch

    from kontext_core.cache.store import TensorStore
    from kontext_core.cache.vae_cache import encode_image
    from kontext_core.data.buckets import apply_crop, resize_and_crop
    from kontext_core.model.load import load_vae, release, training_device
    from kontext_core.model.source import model_fingerprint

    pairs = _read_json(ctx.path("data/pair/pairs.json"))
    store = TensorStore(ctx.path("cache/vae/latents"))
    model_fp = model_fingerprint(ctx.params, ctx.workdir)
    vae = None
    index: dict[str, dict[str, Any]] = {}
    encoded = 0
    for pair in pairs:
        entry: dict[str, Any] = {"target": None, "references": []}
        items = [("target", pair["target"], _crop_of(pair))] + [
            ("reference", r["image"], _crop_of(r)) for r in pair["references"]
        ]
        for role, image, plan in items:
            key = _vae_key(ctx, image, plan, model_fp)
            if not store.has(key):
                if vae is None:
                    vae = load_vae(ctx.params, ctx.workdir).to(training_device())
                img = ctx.open_image(image)
                img = resize_and_crop(img, tuple(plan["size"])) if plan.get("centre") else apply_crop(img, plan)
                store.put(key, {"latents": encode_image(vae, img).to(torch.float32)})
                encoded += 1
            if role == "target":
                entry["target"] = key
            else:
                entry["references"].append(key)
        index[pair["pair_id"]] = entry
    release(vae, ctx.params)
    write_json(ctx.path("cache/vae/index.json"), index)
    ctx.info["encoded"] = encoded


def stage_cache_text(ctx: StageContext) -> None:
    """T5 (512 tokens) and CLIP pooled embeddings of every caption, plus the empty caption."""
    from kontext_core.cache.store import TensorStore
    from kontext_core.cache.text_cache import MAX_SEQUENCE_LENGTH, encode_caption
    from kontext_core.model.load import load_text_pipeline, release, training_device
    from kontext_core.model.source import model_fingerprint

    pairs = _read_json(ctx.path("data/pair/pairs.json"))
    store = TensorStore(ctx.path("cache/text/embeds"))
    model_fp = model_fingerprint(ctx.params, ctx.workdir)
    reference_captions = {r["caption"] for p in pairs for r in p["references"] if r.get("caption") is not None}
    captions = sorted({p["caption"] for p in pairs} | reference_captions | {""})
    pipe = None
    index: dict[str, str] = {}
    encoded = 0
    for caption in captions:
        key = TensorStore.key(caption=caption, text=model_fp, length=MAX_SEQUENCE_LENGTH)
        if not store.has(key):
            if pipe is None:
                pipe = load_text_pipeline(ctx.params, ctx.workdir).to(training_device())
            store.put(key, encode_caption(pipe, caption))
            encoded += 1
        index[caption] = key
    release(pipe.text_encoder if pipe else None, ctx.params)
    release(pipe.text_encoder_2 if pipe else None, ctx.params)
    write_json(ctx.path("cache/text/index.json"), index)
    ctx.info["encoded"] = encoded


def stage_quantize(ctx: StageContext) -> None:
    """Fuse QKV (optional), quantize + freeze the base transformer once (optimum-quanto) and save it."""
    import torch

    from kontext_core.model.fusion import fuse_qkv
    from kontext_core.model.load import load_transformer, training_device
    from kontext_core.model.quantize import quantize_transformer, quantized_module_names, save_quantized

    p = ctx.params
    out = ctx.out("models/quantized")
    write_json(
        out / "precision.json",
        {"base_model_precision": p.base_model_precision, "fuse_qkv_projections": p.fuse_qkv_projections},
    )
    if p.base_model_precision == "no_change":
        return
    dtype = torch.bfloat16 if p.mixed_precision == "bf16" else torch.float32
    model = load_transformer(p, ctx.workdir, dtype=dtype)
    if p.quantize_via == "accelerator":
        model = model.to(training_device())
    if p.fuse_qkv_projections:
        fuse_qkv(model)
    quantize_transformer(model, p.base_model_precision)
    save_quantized(model.to(torch.device("cpu")), out / "transformer", p.base_model_precision)
    ctx.info["quantized_modules"] = len(quantized_module_names(model))


def _base_transformer(ctx: StageContext):
    """The frozen base transformer in training precision: the saved quantized one (rebuilt with
    quanto's `requantize`, no new quantization pass), or the original for `no_change`."""
    from kontext_core.model.fusion import fuse_qkv
    from kontext_core.model.load import load_transformer
    from kontext_core.model.quantize import load_quantized

    p = ctx.params
    if p.base_model_precision == "no_change":
        model = load_transformer(p, ctx.workdir).requires_grad_(False)
        return fuse_qkv(model) if p.fuse_qkv_projections else model
    return load_quantized(ctx.path("models/quantized/transformer"))


def stage_train(ctx: StageContext) -> None:
    """Train the adapter on the cached latents and embeddings; save it in its release format.

    In process, or under `accelerate launch` when `accelerate.num_processes` > 1. Checkpoints go to
    models/checkpoints/<fingerprint>/ (outside the staged outputs) so a crashed run can resume.
    """
    import tempfile

    import mlflow

    from kontext_core.tracking import runs
    from kontext_core.tracking.lineage import log_params
    from kontext_core.train.data import load_cached_data
    from kontext_core.train.loop import bucket_counts
    from kontext_core.train.run import TrainJob, launch, run_training

    p = ctx.params
    run_id = runs.current_run_id(p, ctx.workdir)
    log_params(mlflow.MlflowClient(), run_id, p)
    train_dir = ctx.out("artifacts/train")
    # The job and result files hold paths and timings: kept out of the hashed outputs.
    with tempfile.TemporaryDirectory(prefix=".train-job-", dir=ctx.workdir / "artifacts") as tmp:
        job = TrainJob(
            params=p.model_dump(mode="json"),
            workdir=str(ctx.workdir),
            fingerprint=ctx.fingerprint,
            adapter_dir=str(ctx.out("models/adapter")),
            result_file=str(Path(tmp) / "result.json"),
            run_id=run_id,
        )
        if p.accelerate.num_processes > 1:
            result = launch(job, Path(tmp) / "job.json", p, ctx.workdir)
        else:
            result = run_training(job)
    losses = result.losses
    data = load_cached_data(ctx.workdir)
    write_text(ctx.out(LOSS_PLOT), "step,loss\n" + "".join(f"{i},{v:.6f}\n" for i, v in enumerate(losses)))
    window = max(1, len(losses) // 5)
    metrics = {
        "loss_first": sum(losses[:window]) / window,
        "loss_last": sum(losses[-window:]) / window,
        "steps": len(losses),
        "train_pairs": len(data.samples),
    }
    write_json(ctx.out(TRAIN_METRICS), metrics)
    write_json(train_dir / "mlflow_run.json", {"run_id": run_id})
    ctx.tag_run(run_id)
    ctx.info.update(
        {
            "run_id": run_id,
            "buckets": bucket_counts(data),
            "resumed_from": result.resumed_from,
            "train_seconds": round(result.seconds, 3),
            **metrics,
        }
    )


def stage_validate(ctx: StageContext) -> None:
    """Score the base and the adapter on the eval pairs: eval loss, PSNR, SSIM, grids (kontext_core.validate)."""
    from kontext_core.tracking import runs
    from kontext_core.validate.validation import log_validation, run_validation

    p = ctx.params
    out = ctx.out("artifacts/validate")
    adapter = ctx.path("models/adapter")
    metrics = run_validation(
        p, ctx.workdir, _base_transformer(ctx), adapter, out, ctx.out(VALIDATE_METRICS), ctx.open_image
    )
    run_id = runs.current_run_id(p, ctx.workdir, ctx.path("artifacts/train/mlflow_run.json"))
    log_validation(run_id, metrics, out / "grids")
    ctx.tag_run(run_id)
    ctx.info.update({"run_id": run_id, **{k: v for k, v in metrics.items() if "_t0" not in k}})


def stage_register(ctx: StageContext) -> None:
    """Log the adapter as a pyfunc edit model, register it, and move the champion alias only when it
    beats the champion scored on the same eval set (kontext_core.tracking.promotion)."""
    from kontext_core.tracking import runs
    from kontext_core.tracking.promotion import register_version

    p = ctx.params
    metrics = _read_json(ctx.path(VALIDATE_METRICS))
    run_id = runs.current_run_id(p, ctx.workdir, ctx.path("artifacts/train/mlflow_run.json"))
    registration = register_version(
        p,
        ctx.workdir,
        run_id,
        ctx.path("models/adapter"),
        ctx.path("artifacts/validate"),
        metrics,
        lambda: _base_transformer(ctx),
        ctx.open_image,
    )
    write_json(ctx.out("artifacts/register") / "registration.json", registration.to_dict() | {"run_id": run_id})
    ctx.tag_run(run_id)
    if not os.environ.get(runs.RUN_ID_ENV):
        # Run stage by stage (DVC): nothing else closes the run that train opened.
        runs.end_run(run_id, ctx.workdir, "FINISHED")
    ctx.info.update(registration.to_dict())


# ----------------------------------------------------------------------------------------------
# the registry of stages (order = execution order)

# Every key that changes the trained adapter. Not here, on purpose: checkpoint_step_interval,
# checkpoints_total_limit, resume_from_checkpoint and the accelerate launcher settings (they change how
# a run is carried out, not its result), so resuming or checkpointing more often never retrains.
_TRAIN_KEYS = [
    "lora_type",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_init_type",
    "flux_lora_target",
    "lycoris_config",
    "fuse_qkv_projections",
    "learning_rate",
    "optimizer",
    "lr_scheduler",
    "lr_warmup_steps",
    "lr_end",
    "lr_power",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "max_train_steps",
    "num_train_epochs",
    "train_batch_size",
    "seed",
    "loss_type",
    "huber_c",
    "flow_sigmoid_scale",
    "flow_schedule_shift",
    "flow_schedule_auto_shift",
    "flow_use_uniform_schedule",
    "flux_guidance_mode",
    "flux_guidance_value",
    "flux_guidance_min",
    "flux_guidance_max",
    "caption_dropout_probability",
    "mixed_precision",
    "gradient_checkpointing",
    "gradient_checkpointing_interval",
    "conditioning_multidataset_sampling",
    "accelerate.num_processes",
]
_VALIDATION_KEYS = [
    "validation_guidance",
    "validation_guidance_real",
    "validation_resolution",
    "validation_num_inference_steps",
    "validation_seed",
    "eval_timesteps",
    "flux_guidance_value",
    "conditioning_multidataset_sampling",
]

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in [
        StageSpec(
            "init",
            stage_init,
            ["tiny_model", "sample_data"],
            [],
            [TINY_MODEL_DIR, SAMPLE_DATA_DIR],
            ["kontext_core.model.tiny", "kontext_core.model.tokenizers_offline", "kontext_core.data.samples"],
        ),
        StageSpec(
            "fetch",
            stage_fetch,
            ["data_backend_config"],
            ["init"],
            ["data/fetch"],
            [
                "kontext_core.data.backends",
                "kontext_core.data.records",
                "kontext_core.data.local",
                "kontext_core.data.huggingface",
                "kontext_core.data.scan",
                "kontext_core.data.images",
                "kontext_core.config",
            ],
            extra_inputs=_dataset_inputs,
            persist=[SCAN_CACHE_DIR],
        ),
        StageSpec(
            "pair",
            stage_pair,
            ["data_backend_config", "eval_dataset_id", "seed", "conditioning_multidataset_sampling", "pair"],
            ["fetch"],
            ["data/pair"],
            [
                "kontext_core.data.pairing",
                "kontext_core.data.report",
                "kontext_core.data.buckets",
                "kontext_core.data.degrade",
                "kontext_core.config",
            ],
            extra_inputs=_dataset_file_input,
        ),
        StageSpec(
            "degrade",
            stage_degrade,
            ["seed"],
            ["pair"],
            ["data/degrade"],
            ["kontext_core.data.degrade", "kontext_core.data.generators", "kontext_core.data.images"],
            persist=[DEGRADE_CACHE_DIR],
        ),
        StageSpec(
            "cache_vae",
            stage_cache_vae,
            ["pretrained_model_name_or_path", "revision"],
            ["pair", "degrade"],
            [],
            ["kontext_core.cache.vae_cache", "kontext_core.cache.store", "kontext_core.data.buckets"],
            extra_inputs=_model_inputs,
            persist=["cache/vae"],
        ),
        StageSpec(
            "cache_text",
            stage_cache_text,
            ["pretrained_model_name_or_path", "revision"],
            ["pair"],
            [],
            ["kontext_core.cache.text_cache", "kontext_core.cache.store"],
            extra_inputs=_model_inputs,
            persist=["cache/text"],
        ),
        StageSpec(
            "quantize",
            stage_quantize,
            [
                "pretrained_model_name_or_path",
                "revision",
                "base_model_precision",
                "quantize_via",
                "fuse_qkv_projections",
                "mixed_precision",
            ],
            [],
            ["models/quantized"],
            ["kontext_core.model.quantize", "kontext_core.model.fusion"],
            extra_inputs=_model_inputs,
        ),
        StageSpec(
            "train",
            stage_train,
            _TRAIN_KEYS,
            ["cache_vae", "cache_text", "quantize"],
            ["models/adapter", "artifacts/train"],
            [
                "kontext_core.train.loop",
                "kontext_core.train.kontext_step",
                "kontext_core.train.optimizers",
                "kontext_core.train.schedulers",
                "kontext_core.train.sampler",
                "kontext_core.train.data",
                "kontext_core.train.checkpoints",
                "kontext_core.train.distributed",
                "kontext_core.train.run",
                "kontext_core.model.adapters",
                "kontext_core.model.lycoris",
                "kontext_core.model.fusion",
            ],
            extra_inputs=_adapter_inputs,
            metrics=[TRAIN_METRICS],
            plots=[LOSS_PLOT],
        ),
        StageSpec(
            "validate",
            stage_validate,
            _VALIDATION_KEYS,
            ["train", "pair", "degrade"],
            ["artifacts/validate"],
            [
                "kontext_core.validate.run",
                "kontext_core.validate.metrics",
                "kontext_core.validate.grids",
                "kontext_core.validate.eval_loss",
                "kontext_core.validate.score",
                "kontext_core.validate.validation",
            ],
            extra_inputs=_model_inputs,
            metrics=[VALIDATE_METRICS],
        ),
        StageSpec(
            "register",
            stage_register,
            ["registry", "mlflow.experiment_name"],
            ["train", "validate"],
            ["artifacts/register"],
            [
                "kontext_core.tracking.registry",
                "kontext_core.tracking.promotion",
                "kontext_core.tracking.model_log",
                "kontext_core.tracking.pyfunc_model",
                "kontext_core.tracking.lineage",
                "kontext_core.model.export",
            ],
        ),
    ]
}

STAGE_ORDER = list(STAGES)
