"""The extension points of the house: a third dataset backend, a third adapter kind, a fourth validation
metric and a stage from outside kontext_core each take one new module (tests/plugins/) plus one
registration line (in the fixtures below), and the stages, the registry, DVC and the reports carry them
unchanged. Each fixture removes its registration afterwards, so other tests see the normal tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from kontext_core.config import ConfigError
from kontext_core.data.backends import BACKENDS, register_backend
from kontext_core.model.adapter_kinds import ADAPTER_KINDS, register_adapter_kind
from kontext_core.stages import STAGE_ORDER, STAGES, read_manifest, run_stage
from kontext_core.stages.registry import register_stage, unregister_stage
from kontext_core.validate.metrics import METRICS, register_metric
from tests.conftest import write_params
from tests.plugins import toy_stage as toy_stage_module
from tests.plugins.toy_adapter import WEIGHTS, ToyBias
from tests.plugins.toy_backend import ToyBackend
from tests.plugins.toy_metric import TOY_METRIC


@pytest.fixture
def toy_backend():
    register_backend(ToyBackend())
    yield
    BACKENDS.pop("toy")


@pytest.fixture
def toy_adapter():
    register_adapter_kind(ToyBias())
    yield
    ADAPTER_KINDS.pop("toy")


@pytest.fixture
def toy_metric():
    register_metric(TOY_METRIC)
    yield
    METRICS.pop("toy_mae")


@pytest.fixture
def toy_stage():
    register_stage(toy_stage_module, after="validate")
    yield
    unregister_stage("toy")


def _copy_project(built: Path, dest: Path) -> Path:
    shutil.copytree(built, dest, symlinks=True)
    # The copied store keeps the session's runs; a fresh experiment keeps this test's own.
    write_params(dest / "params.yaml", mlflow={"tracking_uri": f"sqlite:///{dest / 'mlflow.db'}"})
    return dest / "params.yaml"


def _toy_project(built: Path, tmp_path: Path) -> Path:
    """A copy of the built project whose dataset file holds a toy edit set and its toy references."""
    params_file = _copy_project(built, tmp_path / "p")
    datasets = [
        {"id": "edits", "type": "toy", "instance_prompt": "edits", "conditioning_data": ["refs"]},
        {"id": "refs", "type": "toy", "instance_prompt": "refs", "dataset_type": "conditioning"},
    ]
    (tmp_path / "p/config/toy.json").write_text(json.dumps(datasets))
    write_params(params_file, data_backend_config="config/toy.json", eval_dataset_id=None)
    return params_file


def test_a_third_dataset_backend_runs_through_the_data_stages(built_project, tmp_path, toy_backend):
    params_file = _toy_project(built_project, tmp_path)
    for name in ("fetch", "pair", "degrade", "cache_vae"):
        assert not run_stage(name, params_file)["skipped"]
    pairs = json.loads((tmp_path / "p/data/pair/pairs.json").read_text())
    assert [p["target"] for p in pairs] == [f"toy:edits/{i}" for i in range(3)]
    assert [p["references"][0]["image"] for p in pairs] == [f"toy:refs/{i}" for i in range(3)]
    index = json.loads((tmp_path / "p/cache/vae/index.json").read_text())
    assert len(index) == 3 and all(len(entry["references"]) == 1 for entry in index.values())


def test_an_unregistered_backend_is_named_with_the_allowed_ones(built_project, tmp_path):
    params_file = _toy_project(built_project, tmp_path)
    with pytest.raises(Exception, match=r"type = 'toy': unknown backend; allowed: local, huggingface"):
        run_stage("fetch", params_file)


def test_a_third_adapter_kind_trains_validates_and_registers(built_project, tmp_path, toy_adapter):
    params_file = _copy_project(built_project, tmp_path / "p")
    write_params(params_file, lora_type="toy", learning_rate=0.05)
    for name in ("train", "validate", "register"):
        assert not run_stage(name, params_file)["skipped"], name
    saved = load_file(tmp_path / "p/models/adapter" / WEIGHTS)["toy_bias"]
    assert saved.abs().sum() > 0  # it trained
    validate = json.loads((tmp_path / "p/artifacts/metrics/validate.json").read_text())
    assert validate["psnr"] != validate["psnr_base"]  # the live adapter changed the edits
    registration = json.loads((tmp_path / "p/artifacts/register/registration.json").read_text())
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'p/mlflow.db'}")
    version = client.get_model_version(registration["model_name"], registration["version"])
    assert version.tags["kontext.adapter_format"] == "toy-bias"


def test_an_image_edited_in_place_re_runs_the_stages_that_read_pixels(built_project, tmp_path):
    """Same name, same size: the records and the pair table do not change, but the pixels do."""
    from PIL import Image

    params_file = _copy_project(built_project, tmp_path / "p")
    for name in ("fetch", "pair", "degrade", "cache_vae"):
        assert run_stage(name, params_file)["skipped"], name  # the copy is up to date
    index_before = json.loads((tmp_path / "p/cache/vae/index.json").read_text())
    image = sorted((tmp_path / "p/data/samples/pairs/edited").glob("*.png"))[0]
    with Image.open(image) as img:
        pixels = img.convert("RGB")
    pixels.putpixel((0, 0), tuple(255 - c for c in pixels.getpixel((0, 0))))
    pixels.save(image)
    assert not run_stage("fetch", params_file)["skipped"]
    run_stage("pair", params_file)
    assert not run_stage("cache_vae", params_file)["skipped"]
    index_after = json.loads((tmp_path / "p/cache/vae/index.json").read_text())
    changed = [pair for pair in index_before if index_before[pair] != index_after[pair]]
    assert len(changed) == 1  # only the edited image was encoded again (content-addressed)


def test_a_fourth_metric_is_selected_scored_and_decides_the_champion(built_project, tmp_path, toy_metric, monkeypatch):
    from flows.approval import approval_description
    from flows.summary import outcome_lines
    from kontext_core.config import load_params
    from kontext_core.stages.views import validation_markdown
    from kontext_core.tracking.registry import decide

    params_file = _copy_project(built_project, tmp_path / "p")
    project = tmp_path / "p"
    write_params(params_file, registry={"metric": "toy_mae"})
    params = load_params(params_file)
    # Its registration gave the direction: lower is better, so a lower challenger wins and a higher loses.
    assert params.registry.higher_is_better is False
    assert decide(params, 1.0, 2.0, "1")[0] and not decide(params, 2.0, 1.0, "1")[0]
    with pytest.raises(ConfigError, match="contradicts metric 'toy_mae'"):
        write_params(params_file, registry={"metric": "toy_mae", "greater_is_better": True})
        load_params(params_file)
    write_params(params_file, registry={"metric": "toy_mae", "greater_is_better": None})

    assert run_stage("train", params_file)["skipped"]  # the built adapter
    from kontext_core.tracking import runs

    # One MLflow run for validate and register in this copy's own store, as a flow run has.
    run_id = runs.start_run(params, project)
    monkeypatch.setenv(runs.RUN_ID_ENV, run_id)
    assert not run_stage("validate", params_file)["skipped"]  # a new metric is scored: validate runs again
    metrics = json.loads((project / "artifacts/metrics/validate.json").read_text())
    per_pair = json.loads((project / "artifacts/validate/per_pair.json").read_text())
    assert 0 < metrics["toy_mae"] < 255 and metrics["toy_mae"] != metrics["toy_mae_base"]
    assert metrics["toy_mae"] == pytest.approx(sum(row["toy_mae"] for row in per_pair) / len(per_pair))
    assert {"eval_loss", "psnr", "ssim", "eval_pairs"} < set(metrics)  # the built-in scalars stay

    register = run_stage("register", params_file)
    assert not register["skipped"]
    info = register["info"]
    assert info["metric"] == "toy_mae" and info["challenger_score"] == metrics["toy_mae"]
    score = f"toy_mae {metrics['toy_mae']:.6g}"
    if info["champion_version"] is None:
        assert info["reason"] == f"no @champion yet: the first version becomes @champion ({score})"
    else:  # the copied store's champion holds this same adapter: scored again on toy_mae, it ties
        assert info["champion_rescored"] and info["champion_metric"] == metrics["toy_mae"]
        assert info["reason"].startswith(f"{score} ties @champion") and "(lower is better)" in info["reason"]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    version = client.get_model_version(info["model_name"], info["version"])
    assert float(version.tags["val/toy_mae"]) == metrics["toy_mae"]
    logged = client.get_run(run_id).data.metrics
    assert logged["val/toy_mae"] == metrics["toy_mae"] and logged["val/toy_mae_base"] == metrics["toy_mae_base"]
    assert logged["registry/challenger_toy_mae"] == metrics["toy_mae"]

    # The reports show it without a change of their own.
    manifests = {name: read_manifest(project, name) for name in ("validate", "register")}
    assert f"validation toy_mae: {metrics['toy_mae']:.4f}" in outcome_lines(manifests, "toy_mae")[0]
    assert f"| toy_mae | {metrics['toy_mae_base']} | {metrics['toy_mae']} |" in approval_description(
        params, project, manifests
    )
    assert "| MAE base | MAE lora |" in validation_markdown(per_pair, project / "artifacts/validate/grids", None)


def test_an_unregistered_metric_is_named_with_the_allowed_ones(tmp_path):
    from kontext_core.config import params_from_dict

    with pytest.raises(ConfigError) as caught:
        params_from_dict({"registry": {"metric": "toy_mae"}}, where="params.yaml")
    assert caught.value.problems == [
        "params.yaml: registry.metric = 'toy_mae': unknown metric; allowed: eval_loss, psnr, ssim"
    ]


def test_a_stage_from_outside_runs_through_the_engine_dvc_and_the_reports(built_project, tmp_path, toy_stage):
    from flows.placement import stage_groups
    from flows.summary import outcome_lines
    from kontext_core.config import load_params
    from kontext_core.dvc_yaml import build_dvc_yaml

    assert STAGE_ORDER[STAGE_ORDER.index("validate") + 1] == "toy" and STAGE_ORDER[-1] == "register"
    params_file = _copy_project(built_project, tmp_path / "p")
    project = tmp_path / "p"
    first = run_stage("toy", params_file)
    assert not first["skipped"]
    counts = json.loads((project / "artifacts/toy/counts.json").read_text())
    pairs = json.loads((project / "data/pair/pairs.json").read_text())
    assert sum(counts["pairs"].values()) == len(pairs) > 0
    manifest = read_manifest(project, "toy")
    assert manifest["fingerprint"] == first["fingerprint"]
    assert manifest["code_version"] == toy_stage_module.SPEC.code_version()
    assert set(manifest["inputs"]) == {"pair"}  # upstream output hashes, from what the spec reads
    assert run_stage("toy", params_file)["skipped"]  # same fingerprint, intact outputs
    write_params(params_file, seed=counts["seed"] + 1)
    again = run_stage("toy", params_file)
    assert not again["skipped"] and again["fingerprint"] != first["fingerprint"]  # a params key it declares

    stage = build_dvc_yaml(project)["stages"]["toy"]
    assert stage["cmd"] == "kontext stage toy" and stage["params"] == ["seed"]
    assert "data/pair" in stage["deps"] and "tests/plugins/toy_stage.py" in stage["deps"]
    assert stage["outs"] == ["artifacts/toy", "artifacts/manifests/toy.json"]
    assert list(build_dvc_yaml(project)["stages"]) == STAGE_ORDER

    # Its roles: its report, its summary line, its pool (no accelerator: the data pool).
    params = load_params(params_file)
    reports = STAGES["toy"].reports(project, read_manifest(project, "toy"), params)
    assert [(a.kind, a.key) for a in reports] == [("table", "kontext-toy-counts")]
    assert sum(row["pairs"] for row in reports[0].content) == len(pairs)
    assert f"toy: {len(pairs)} pairs counted" in outcome_lines({"toy": read_manifest(project, "toy")}, "eval_loss")
    assert "toy" in stage_groups(params)["data"] and "toy" not in stage_groups(params)["gpu"]


def test_a_stage_from_outside_runs_in_the_flow(built_project, tmp_path, toy_stage, prefect_harness):
    from flows.train_flow import kontext_train

    params_file = _copy_project(built_project, tmp_path / "p")
    result = kontext_train(params_file=str(params_file))
    assert result["stages"]["toy"] == "ran"
    assert {name for name, state in result["stages"].items() if state != "skipped"} == {"toy"}
    assert list(result["stages"]) == STAGE_ORDER
    assert read_manifest(tmp_path / "p", "toy")["info"]["pairs"]


def test_a_removed_stage_leaves_the_normal_table():
    assert "toy" not in STAGES and "toy" not in STAGE_ORDER
    assert STAGE_ORDER == [
        "init",
        "fetch",
        "pair",
        "degrade",
        "cache_vae",
        "cache_text",
        "quantize",
        "train",
        "validate",
        "register",
    ]


def test_register_stage_refuses_a_place_before_what_it_reads():
    with pytest.raises(ValueError, match="stage 'toy' reads from pair, which would not run before it"):
        register_stage(toy_stage_module, after="init")
    with pytest.raises(ValueError, match=r"register_stage\(after='nope'\): unknown stage; allowed: init, fetch"):
        register_stage(toy_stage_module, after="nope")
    assert "toy" not in STAGES


def test_the_roles_of_the_built_in_stages_come_from_their_specs():
    from flows.placement import GPU_STAGES, stage_groups
    from flows.train_flow import MLFLOW_STAGES
    from kontext_core.config import params_from_dict

    assert GPU_STAGES == MLFLOW_STAGES == ("train", "validate", "register")
    assert stage_groups(params_from_dict({}))["gpu"] == ["train", "validate", "register"]
    # quantize joins the GPU pool when it quantizes there (a role that depends on the params).
    gpu = stage_groups(params_from_dict({"quantize_via": "accelerator"}))["gpu"]
    assert gpu == ["quantize", "train", "validate", "register"]
    assert [n for n, s in STAGES.items() if s.artifacts] == ["pair", "train", "validate", "register"]
    assert [n for n, s in STAGES.items() if s.summary] == ["train", "validate", "register"]
