"""The pieces of validation and registration that need no trained model."""

from __future__ import annotations

import mlflow
import pytest
import torch
from PIL import Image

from kontext_core.config import ConfigError, params_from_dict
from kontext_core.model.export import to_kohya
from kontext_core.tracking.open_runs import fail_abandoned, listed, remember
from kontext_core.tracking.pyfunc_model import portable_base_model, resolve_base_model
from kontext_core.tracking.registry import decide
from kontext_core.validate.eval_loss import eval_items, eval_sigmas, noise_seed, timestep_label
from kontext_core.validate.metrics import METRICS, psnr, ssim
from kontext_core.validate.run import conditioned_inputs

PAIR = {
    "pair_id": "edit/a.png",
    "caption": "invert",
    "target": "t.png",
    "size": [64, 32],
    "crop": {"source": [128, 64], "downsample": None, "resize": [64, 32], "box": [0, 0, 64, 32], "size": [64, 32]},
    "references": [
        {"image": "r1.png", "size": [64, 32], "caption": None, "crop": None},
        {"image": "r2.png", "size": [32, 32], "caption": "own caption", "crop": None},
    ],
}
VAE_INDEX = {"edit/a.png": {"target": "kt", "references": ["k1", "k2"]}}


def test_eval_sigmas_are_evenly_spread_midpoints():
    assert eval_sigmas(4) == [0.125, 0.375, 0.625, 0.875]
    assert [timestep_label(s) for s in eval_sigmas(2)] == ["t0250", "t0750"]


def test_eval_items_condition_like_training():
    combined = eval_items([PAIR], VAE_INDEX, "combined", {"invert", "own caption"})
    assert [(i.references, i.caption) for i in combined] == [(("k1", "k2"), "invert")]
    random = eval_items([PAIR], VAE_INDEX, "random", {"invert", "own caption"})
    assert [(i.references, i.caption) for i in random] == [(("k1",), "invert"), (("k2",), "own caption")]


def test_noise_seed_depends_on_pair_references_and_timestep_only():
    a, b = eval_items([PAIR], VAE_INDEX, "random", {"invert"})
    assert noise_seed(0, a, 0) == noise_seed(0, a, 0)
    assert len({noise_seed(0, a, 0), noise_seed(0, a, 1), noise_seed(0, b, 0), noise_seed(1, a, 0)}) == 4


def test_validation_inputs_follow_crop_plans_and_show_every_reference_when_combined():
    sizes = {"t.png": (128, 64), "r1.png": (64, 32), "r2.png": (32, 32)}

    def load(name: str) -> Image.Image:
        return Image.new("RGB", sizes[name], (10, 20, 30))

    reference, target, caption = conditioned_inputs(PAIR, load, "combined")
    assert target.size == (64, 32) and reference.size == (96, 32) and caption == "invert"
    reference, _, caption = conditioned_inputs(PAIR, load, "random")
    assert reference.size == (64, 32)


def test_metric_directions_and_image_metrics():
    assert not METRICS["eval_loss"].greater_is_better and METRICS["psnr"].greater_is_better
    # The registry's direction (config) is each metric's own.
    for name, definition in METRICS.items():
        registry = params_from_dict({"registry": {"metric": name}}).registry
        assert registry.higher_is_better == definition.greater_is_better
    a = Image.new("RGB", (32, 32), (100, 100, 100))
    b = Image.new("RGB", (32, 32), (110, 100, 100))
    assert ssim(a, a) == pytest.approx(1.0) and ssim(a, b) < 1.0
    assert psnr(a, b) < psnr(a, a)


def test_registry_direction_is_the_metrics_and_a_contradiction_is_an_error():
    params = params_from_dict({})
    assert params.registry.metric == "eval_loss"
    assert decide(params, 0.5, 0.6, "1")[0]
    kept, reason = decide(params, 0.6, 0.5, "1")
    assert not kept and "does not beat @champion" in reason and "lower is better" in reason
    tie, reason = decide(params, 0.5, 0.5, "1")
    assert not tie and "ties" in reason
    with pytest.raises(ConfigError, match="contradicts metric 'eval_loss'"):
        params_from_dict({"registry": {"greater_is_better": True}})


def test_registry_metric_is_checked_against_the_registered_metrics_in_one_line():
    with pytest.raises(ConfigError) as caught:
        params_from_dict({"registry": {"metric": "lpips"}})
    assert caught.value.problems == [
        "params: registry.metric = 'lpips': unknown metric; allowed: " + ", ".join(METRICS)
    ]
    assert list(METRICS)[:3] == ["eval_loss", "psnr", "ssim"]


def test_kohya_keys_carry_alpha_per_module():
    state = {
        "transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight": torch.ones(4, 8),
        "transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight": torch.ones(8, 4),
    }
    out = to_kohya(state, alpha=8.0)
    name = "lora_unet_double_blocks_0_img_attn_proj"
    assert set(out) == {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"}
    assert float(out[f"{name}.alpha"]) == 8.0
    assert float(to_kohya(state, alpha=None)[f"{name}.alpha"]) == 4.0  # no alpha recorded: alpha = rank


def test_base_model_is_recorded_without_absolute_paths(tmp_path):
    (tmp_path / "models/base").mkdir(parents=True)
    (tmp_path / "models/base/model_index.json").write_text("{}")
    record = portable_base_model("models/base", None, tmp_path)
    assert record == {"path": "models/base", "root": "project"}
    assert portable_base_model(str(tmp_path / "models/base"), None, tmp_path) == record
    assert portable_base_model("org/model", "abc", tmp_path) == {"hub_id": "org/model", "revision": "abc"}
    assert resolve_base_model(record, str(tmp_path))[0] == str(tmp_path / "models/base")
    with pytest.raises(FileNotFoundError, match="KONTEXT_BASE_MODEL_ROOT"):
        resolve_base_model({"path": "models/elsewhere", "root": "project"}, str(tmp_path))


def test_a_run_left_running_is_failed_by_the_next_one(tmp_path, mlflow_db):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
    experiment = client.create_experiment("x")
    killed = client.create_run(experiment).info.run_id
    remember(tmp_path, killed)
    assert fail_abandoned(client, tmp_path) == [killed]
    assert client.get_run(killed).info.status == "FAILED"
    assert listed(tmp_path) == []


def test_a_stage_that_raises_under_kontext_stage_ends_its_run_failed(tmp_path, mlflow_db):
    from typer.testing import CliRunner

    from flows.cli import app
    from tests.conftest import make_project

    params = make_project(tmp_path / "p", mlflow_db=mlflow_db)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
    open_run = client.create_run(client.create_experiment("y")).info.run_id
    remember(tmp_path / "p", open_run)
    # fetch needs init's sample data: it raises, as a crashing stage under DVC would.
    result = CliRunner().invoke(app, ["stage", "fetch", "--params", str(params)])
    assert result.exit_code != 0
    run = client.get_run(open_run)
    assert run.info.status == "FAILED" and "stage fetch" in run.data.tags["kontext.failure"]
