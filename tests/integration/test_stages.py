"""Each stage on a built project (real tiny model, real MLflow store), and the stage contract."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from kontext_core.config import load_params
from kontext_core.data.sources import open_ref
from kontext_core.fsutil import sha256_file
from kontext_core.stages import STAGE_ORDER, STAGES, fingerprint, read_manifest, run_stage
from tests.conftest import fetched_records, write_params


def _json(project: Path, rel: str):
    return json.loads((project / rel).read_text())


def _use_store(project: Path) -> None:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def test_fetch_splits_composites_and_reads_folders(built_project):
    fetched = fetched_records(built_project)["records"]
    assert {k: len(v) for k, v in fetched.items()} == {
        "subjects-scene": 4,
        "subjects-plain": 4,
        "pairs-edited": 4,
        "pairs-reference": 4,
        "pairs-eval": 2,
        "pairs-eval-reference": 2,
        "sharp-images": 4,
    }
    scene = fetched["subjects-scene"][0]
    assert open_ref(scene["image"], built_project).size == (64, 64)  # half of the 128x64 composite
    assert (scene["width"], scene["height"]) == (64, 64)  # the panel size, from the header alone
    assert scene["caption"].startswith("put the")
    assert not Path(scene["image"]).is_absolute()  # tables are portable across project copies


def test_pair_table_holds_out_eval_and_keeps_strict_crops(built_project):
    pairs = _json(built_project, "data/pair/pairs.json")
    assert sorted({p["split"] for p in pairs}) == ["eval", "train"]
    assert {p["dataset_id"] for p in pairs if p["split"] == "eval"} == {"pairs-eval"}
    for pair in pairs:
        assert all(ref["size"] == pair["size"] for ref in pair["references"])
    generated = [p for p in pairs if p["dataset_id"] == "sharp-images"]
    assert generated and all(
        p["caption"] in {"enhance sharpness", "deblur", "increase clarity", "sharpen image"} for p in generated
    )
    report = _json(built_project, "data/pair/report.json")
    assert report["datasets"]["pairs-edited"]["pairs"] == 4
    assert (built_project / "data/pair/report.md").read_text().startswith("# Pre-flight report")


def test_degrade_blurs_the_reference(built_project):
    pair = next(p for p in _json(built_project, "data/pair/pairs.json") if p["dataset_id"] == "sharp-images")
    sharp = np.asarray(Image.open(built_project / pair["target"]).convert("L"), dtype=float)
    blurred = np.asarray(Image.open(built_project / pair["references"][0]["image"]).convert("L"), dtype=float)
    edges = lambda a: np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
    assert blurred.shape == sharp.shape
    assert edges(blurred) < edges(sharp)


def test_vae_cache_matches_a_fresh_encode(built_project):
    from diffusers import AutoencoderKL

    from kontext_core.cache.store import TensorStore
    from kontext_core.cache.vae_cache import encode_image
    from kontext_core.data.buckets import resize_and_crop

    pair = _json(built_project, "data/pair/pairs.json")[0]
    key = _json(built_project, "cache/vae/index.json")[pair["pair_id"]]["target"]
    cached = TensorStore(built_project / "cache/vae/latents").get(key)["latents"]
    vae = AutoencoderKL.from_pretrained(built_project / "models/tiny-kontext", subfolder="vae").eval()
    # A 64 px bucket (the smallest: edges align to 64) through the VAE's downsampling.
    side = 64 // 2 ** (len(vae.config.block_out_channels) - 1)
    assert cached.shape == (16, side, side)
    fresh = encode_image(vae, resize_and_crop(open_ref(pair["target"], built_project), (64, 64)))
    assert torch.allclose(cached, fresh, atol=1e-6)


def test_text_cache_has_the_configured_t5_length_and_pooled(built_project):
    from kontext_core.cache.store import TensorStore
    from kontext_core.cache.text_cache import sequence_length
    from kontext_core.config import load_params

    index = _json(built_project, "cache/text/index.json")
    assert "" in index  # the empty caption, for caption dropout
    entry = TensorStore(built_project / "cache/text/embeds").get(index[""])
    length = sequence_length(load_params(built_project / "params.yaml"))
    assert length == load_params(built_project / "params.yaml").tokenizer_max_length == 32
    assert entry["prompt_embeds"].shape == (length, 32)
    assert entry["pooled_prompt_embeds"].shape == (32,)


def test_quantized_transformer_reloads_close_to_the_original(built_project):
    from diffusers import FluxTransformer2DModel
    from optimum.quanto import QLinear

    from kontext_core.model.quantize import load_quantized

    quantized = load_quantized(built_project / "models/quantized/transformer")
    assert isinstance(quantized.transformer_blocks[0].attn.to_q, QLinear)
    original = FluxTransformer2DModel.from_pretrained(built_project / "models/tiny-kontext", subfolder="transformer")
    torch.manual_seed(0)
    n = 16
    ids = torch.zeros(2 * n, 3)
    ids[n:, 0] = 1
    kwargs = dict(
        hidden_states=torch.randn(1, 2 * n, 64),
        encoder_hidden_states=torch.randn(1, 512, 32),
        pooled_projections=torch.randn(1, 32),
        timestep=torch.tensor([0.5]),
        img_ids=ids,
        txt_ids=torch.zeros(512, 3),
        guidance=torch.tensor([1.0]),
        return_dict=False,
    )
    with torch.no_grad():
        ref = original.eval()(**kwargs)[0]
        out = quantized(**kwargs)[0]
    assert ((out - ref).norm() / ref.norm()).item() < 0.02


def test_train_writes_a_diffusers_lora_and_logs_the_loss(built_project):
    adapter = built_project / "models/adapter/pytorch_lora_weights.safetensors"
    with safe_open(str(adapter), "pt") as fh:
        keys = list(fh.keys())
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert any(k.endswith("attn.to_q.lora_A.weight") for k in keys)
    assert any(".add_q_proj.lora_B.weight" in k for k in keys)
    run_id = _json(built_project, "artifacts/train/mlflow_run.json")["run_id"]
    _use_store(built_project)
    history = mlflow.MlflowClient().get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == list(range(6))
    run = mlflow.get_run(run_id)
    assert run.data.params["learning_rate"] == str(load_params(built_project / "params.yaml").learning_rate)
    assert run.data.tags["kontext.fingerprint.train"] == read_manifest(built_project, "train")["fingerprint"]
    assert "kontext.data.pairs-edited" in run.data.tags
    assert (built_project / "artifacts/plots/train_loss.csv").read_text().startswith("step,loss\n0,")


def test_validate_writes_grids_and_psnr(built_project):
    metrics = _json(built_project, "artifacts/metrics/validate.json")
    assert metrics["eval_pairs"] == 2
    assert 0 < metrics["psnr"] < 100
    grids = sorted((built_project / "artifacts/validate/grids").glob("*.png"))
    assert len(grids) == 2
    assert Image.open(grids[0]).width == 4 * 64  # reference | base | lora | target


def test_register_sets_champion_alias(built_project):
    _use_store(built_project)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("kontext-lora", "champion")
    registration = _json(built_project, "artifacts/register/registration.json")
    assert str(version.version) == registration["version"]
    assert version.run_id == registration["run_id"]


def test_second_run_of_every_stage_is_a_no_op(built_project):
    before = {name: read_manifest(built_project, name)["fingerprint"] for name in STAGE_ORDER}
    for name in STAGE_ORDER:
        assert run_stage(name, built_project / "params.yaml")["skipped"], name
    assert before == {name: read_manifest(built_project, name)["fingerprint"] for name in STAGE_ORDER}


def test_learning_rate_changes_only_the_train_fingerprint_upstream(built_project, tmp_path):
    params = load_params(built_project / "params.yaml").model_copy(update={"learning_rate": 0.002})
    changed = [
        name
        for name in STAGE_ORDER[: STAGE_ORDER.index("train") + 1]
        if fingerprint(name, params, built_project).value != read_manifest(built_project, name)["fingerprint"]
    ]
    assert changed == ["train"]


def test_training_is_reproducible_byte_for_byte(built_project):
    adapter = built_project / "models/adapter/pytorch_lora_weights.safetensors"
    first = sha256_file(adapter)
    manifest = run_stage("train", built_project / "params.yaml", force=True)
    assert not manifest["skipped"]
    assert sha256_file(adapter) == first


def test_a_failing_stage_leaves_old_outputs_and_no_partial_files(built_project, monkeypatch):
    spec = STAGES["pair"]
    before = (built_project / "data/pair/pairs.json").read_text()

    def crash(ctx):
        (ctx.out("data/pair") / "pairs.json").write_text("[partial")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(spec, "fn", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_stage("pair", built_project / "params.yaml", force=True)
    assert (built_project / "data/pair/pairs.json").read_text() == before
    assert not [p for p in (built_project / "data").iterdir() if p.name.startswith(".")]


def test_missing_output_makes_the_stage_run_again(built_project, tmp_path):
    report = built_project / "data/pair/report.md"
    text = report.read_text()
    report.unlink()
    import shutil

    shutil.rmtree(built_project / "data/pair")
    manifest = run_stage("pair", built_project / "params.yaml")
    assert not manifest["skipped"]
    assert report.read_text() == text


def test_zero_usable_pairs_fails_with_a_pointer_to_the_report(tmp_path, built_project, mlflow_db):
    import shutil

    project = tmp_path / "p"
    shutil.copytree(built_project, project, ignore=shutil.ignore_patterns("mlflow.db", "mlruns"))
    config = json.loads((project / "config/multidatabackend.json").read_text())
    for entry in config:
        if entry["id"] == "pairs-edited":
            entry["conditioning_data"] = ["pairs-eval-reference"]  # file names that never match
        elif entry["id"] not in ("pairs-eval-reference", "text-embeds"):
            entry["disabled"] = True
    (project / "config/multidatabackend.json").write_text(json.dumps(config))
    write_params(project / "params.yaml", eval_dataset_id=None)
    run_stage("fetch", project / "params.yaml")
    with pytest.raises(RuntimeError, match="no usable training pairs"):
        run_stage("pair", project / "params.yaml")


def test_fingerprint_without_upstream_manifest_hashes_outputs_on_disk(built_project, tmp_path):
    import shutil

    project = tmp_path / "pulled"
    shutil.copytree(built_project, project, ignore=shutil.ignore_patterns("mlflow.db", "mlruns"))
    params = load_params(project / "params.yaml")
    expected = fingerprint("pair", params, project).value
    (project / "artifacts/manifests/fetch.json").unlink()  # as after `dvc pull` into a fresh clone
    assert fingerprint("pair", params, project).value == expected
    shutil.rmtree(project / "data/fetch")
    with pytest.raises(RuntimeError, match="needs stage 'fetch'"):
        fingerprint("pair", params, project)


def test_a_pairing_key_in_the_dataset_file_reruns_pair(built_project, tmp_path):
    """fetch's records do not change with conditioning_type / crop keys; pair must still see them."""
    import shutil

    project = tmp_path / "edited"
    shutil.copytree(built_project, project, ignore=shutil.ignore_patterns("mlflow.db", "mlruns"))
    params = load_params(project / "params.yaml")
    before = fingerprint("pair", params, project).value
    config_file = project / "config/multidatabackend.json"
    entries = json.loads(config_file.read_text())
    next(e for e in entries if e["id"] == "pairs-reference")["conditioning_type"] = "reference_loose"
    config_file.write_text(json.dumps(entries, indent=2))
    assert fingerprint("pair", params, project).value != before
