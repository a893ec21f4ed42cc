"""The train stage end to end on the tiny model: real learning, SIGKILL + resume, 2-process gloo DDP."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from kontext_core.fsutil import sha256_file
from kontext_core.stages import STAGE_ORDER, run_stage
from tests.conftest import ROOT, make_project, write_params

ADAPTER = "models/adapter/pytorch_lora_weights.safetensors"
# The colour-inversion pairs only, 32 px images in 64 px buckets (8x8 latents), full-precision base.
SETTINGS = {
    "base_model_precision": "no_change",
    "max_train_steps": 120,
    "learning_rate": 0.01,
    "validation_resolution": 32,
    "validation_num_inference_steps": 4,
    "sample_data": {"count": 8, "size": 32, "seed": 0},
}


@pytest.fixture(scope="module")
def pairs_project(tmp_path_factory) -> Path:
    """Every stage before train, once; tests train on copies."""
    root = tmp_path_factory.mktemp("pairs")
    params = make_project(root, **SETTINGS)
    config = json.loads((root / "config/multidatabackend.json").read_text())
    config = [e for e in config if e["id"].startswith("pairs") or e.get("dataset_type") == "text_embeds"]
    (root / "config/multidatabackend.json").write_text(json.dumps(config))
    for name in STAGE_ORDER[: STAGE_ORDER.index("train")]:
        run_stage(name, params)
    return root


def _copy(src: Path, dest: Path, mlflow_template: Path, **overrides) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("mlflow.db", "mlruns"))
    shutil.copy(mlflow_template, dest / "mlflow.db")
    write_params(dest / "params.yaml", mlflow={"tracking_uri": f"sqlite:///{dest / 'mlflow.db'}"}, **overrides)
    return dest / "params.yaml"


def _losses(project: Path) -> list[float]:
    lines = (project / "artifacts/plots/train_loss.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[1]) for line in lines]


def _vae_ceiling(project: Path) -> float:
    """PSNR of the tiny random VAE's own reconstruction of the eval targets: the best any edit can score."""
    from diffusers import AutoencoderKL
    from PIL import Image

    from kontext_core.cache.vae_cache import encode_image
    from kontext_core.data.buckets import apply_crop
    from kontext_core.data.images import open_rgb
    from kontext_core.validate.metrics import psnr

    vae = AutoencoderKL.from_pretrained(project / "models/tiny-kontext", subfolder="vae").eval()
    scores = []
    for pair in json.loads((project / "data/pair/pairs.json").read_text()):
        if pair["split"] != "eval":
            continue
        # Validation scores each target cropped by its own plan, at its bucket size.
        target = apply_crop(open_rgb(project / pair["target"]), pair["crop"])
        latents = encode_image(vae, target)[None] / vae.config.scaling_factor + vae.config.shift_factor
        with torch.no_grad():
            pixels = vae.decode(latents).sample[0].clamp(-1, 1)
        image = Image.fromarray(((pixels + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
        scores.append(psnr(image, target))
    return sum(scores) / len(scores)


def _fixed_noise_loss(project: Path, trained: bool) -> float:
    """The step's loss on the held-out eval pairs at fixed noise and sigmas, with or without the adapter."""
    from kontext_core.cache.store import TensorStore
    from kontext_core.config import load_params
    from kontext_core.model.adapter_kinds import attach_saved_adapter
    from kontext_core.model.kontext_step import StepInputs, kontext_step
    from kontext_core.model.load import load_transformer

    params = load_params(project / "params.yaml")
    transformer = load_transformer(params, project).requires_grad_(False)
    if trained:
        attach_saved_adapter(transformer, project / "models/adapter", params)
    pairs = [p for p in json.loads((project / "data/pair/pairs.json").read_text()) if p["split"] == "eval"]
    vae_index = json.loads((project / "cache/vae/index.json").read_text())
    text_index = json.loads((project / "cache/text/index.json").read_text())
    latents, embeds = TensorStore(project / "cache/vae/latents"), TensorStore(project / "cache/text/embeds")
    generator = torch.Generator().manual_seed(0)
    losses = []
    for pair in pairs:
        keys = vae_index[pair["pair_id"]]
        x0 = latents.get(keys["target"])["latents"][None]
        reference = latents.get(keys["references"][0])["latents"][None]
        text = embeds.get(text_index[pair["caption"]])
        inputs = StepInputs(x0, [reference], text["prompt_embeds"][None], text["pooled_prompt_embeds"][None])
        for sigma in (0.25, 0.5, 0.75):
            noise = torch.randn(x0.shape, generator=generator)
            with torch.no_grad():
                losses.append(kontext_step(transformer, inputs, noise, torch.tensor([sigma])).loss.item())
    return sum(losses) / len(losses)


def test_training_learns_the_colour_inversion(pairs_project, tmp_path, mlflow_template):
    params = _copy(pairs_project, tmp_path / "learn", mlflow_template)
    project = params.parent
    run_stage("train", params)
    run_stage("validate", params)
    train = json.loads((project / "artifacts/metrics/train.json").read_text())
    val = json.loads((project / "artifacts/metrics/validate.json").read_text())
    ceiling = _vae_ceiling(project)
    before, after = _fixed_noise_loss(project, trained=False), _fixed_noise_loss(project, trained=True)
    print(
        f"train loss {train['loss_first']:.4f} -> {train['loss_last']:.4f}; eval loss {before:.4f} -> {after:.4f}; "
        f"psnr untrained {val['psnr_base']:.3f}, trained {val['psnr']:.3f}, VAE ceiling {ceiling:.3f}"
    )
    assert train["loss_last"] < 0.95 * train["loss_first"]
    assert after < 0.85 * before  # on held-out pairs, same noise and sigmas
    # The validate stage's own eval loss (its fixed timesteps and noise) sees the same improvement.
    assert val["eval_loss"] < 0.85 * val["eval_loss_base"]
    # PSNR is reported, not the judge here (two pretraining steps leave the base close to random; the
    # demo's margin is tests/e2e/test_demo_edit.py).
    assert math.isfinite(val["psnr"]) and math.isfinite(val["psnr_base"])


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_adapter_of_an_uninterrupted_run(pairs_project, tmp_path, mlflow_template):
    overrides = dict(max_train_steps=60, checkpoint_step_interval=10, resume_from_checkpoint="latest")
    killed = _copy(pairs_project, tmp_path / "killed", mlflow_template, **overrides).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "stage", "train", "--params", str(killed / "params.yaml")],
            cwd=killed,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        checkpoints: list[Path] = []
        while proc.poll() is None and not checkpoints and time.monotonic() < deadline:
            time.sleep(0.02)
            checkpoints = list((killed / "models/checkpoints").glob("*/checkpoint-*/trainer_state.json"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    assert not (killed / ADAPTER).exists()
    steps = sorted(int(p.name.split("-")[1]) for p in (killed / "models/checkpoints").glob("*/checkpoint-*"))
    assert steps and steps[-1] < 60

    resumed = run_stage("train", killed / "params.yaml")
    assert resumed["info"]["resumed_from"].endswith(f"checkpoint-{steps[-1]}")

    straight = _copy(pairs_project, tmp_path / "straight", mlflow_template, **overrides).parent
    assert run_stage("train", straight / "params.yaml")["info"]["resumed_from"] is None
    # Checkpoint by checkpoint first, so a failure says whether the killed process's steps or the
    # resumed ones drifted.
    for step in range(steps[-1], 60, 10):
        [mine] = (killed / "models/checkpoints").glob(f"*/checkpoint-{step}/adapter.safetensors")
        [theirs] = (straight / "models/checkpoints").glob(f"*/checkpoint-{step}/adapter.safetensors")
        assert sha256_file(mine) == sha256_file(theirs), f"checkpoint-{step} differs"
    assert sha256_file(killed / ADAPTER) == sha256_file(straight / ADAPTER)
    assert _losses(killed) == _losses(straight)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


VALUE_PATHS = ["to_v", "to_out.0", "add_v_proj", "to_add_out"]


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_process_with_accumulation(pairs_project, tmp_path, mlflow_template):
    steps = 4
    # Value paths only: the pretrained base's lookup block gives its queries and keys (and the
    # feed-forward LoRA_A factors) near-zero gradients at first, where Adam's normalisation turns float
    # summation order into full-size differences; the value paths train on real gradients.
    ddp = _copy(
        pairs_project,
        tmp_path / "ddp",
        mlflow_template,
        max_train_steps=steps,
        flux_lora_target=VALUE_PATHS,
        accelerate={
            "num_processes": 2,
            "config_file": str(ROOT / "infra/accelerate/cpu_gloo_2.yaml"),
            "main_process_port": _free_port(),
        },
    ).parent
    single = _copy(
        pairs_project,
        tmp_path / "single",
        mlflow_template,
        max_train_steps=steps,
        gradient_accumulation_steps=2,
        flux_lora_target=VALUE_PATHS,
    ).parent
    run_stage("train", ddp / "params.yaml")
    run_stage("train", single / "params.yaml")
    # Each process took one batch of every pair and the gradients were averaged: the same update as
    # one process accumulating both batches, up to float summation order.
    a, b = load_file(ddp / ADAPTER), load_file(single / ADAPTER)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    assert _losses(ddp) == pytest.approx(_losses(single), abs=1e-5)
    plain = _copy(
        pairs_project, tmp_path / "plain", mlflow_template, max_train_steps=steps, flux_lora_target=VALUE_PATHS
    ).parent
    run_stage("train", plain / "params.yaml")
    alone = load_file(plain / ADAPTER)
    assert any(not torch.allclose(alone[k], a[k], atol=1e-5) for k in a)  # the second batch mattered
    run_id = json.loads((ddp / "artifacts/train/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ddp / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(steps))
