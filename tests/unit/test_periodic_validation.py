"""validation_step_interval: the live adapter is validated during training, logged by step, and the
run trains exactly the adapter a run without it trains."""

from __future__ import annotations

import pytest
from PIL import Image

from kontext_core.model.adapter_kinds import add_adapter
from kontext_core.train.loop import seed_everything, train_loop
from kontext_core.validate.periodic import PeriodicValidation, validation_pairs
from tests.unit.test_train_loop import _equal, _params, data  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow  # builds the tiny pipeline and trains twice (minutes on two cores)

PAIRS = [
    {
        "pair_id": f"eval/{i}.png",
        "caption": "invert",
        "split": "eval",
        "target": f"t{i}",
        "size": [32, 32],  # a pair table's bucket (no crop plan: centre crop to it)
        "references": [{"image": f"r{i}", "size": [32, 32]}],
    }
    for i in range(3)
]


def _load(stored: str) -> Image.Image:
    return Image.new("RGB", (40, 40), (200, 30, 30) if stored.startswith("r") else (30, 30, 200))


@pytest.fixture(scope="module")
def pipeline():
    from kontext_core.model.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    pipe.transformer.eval().requires_grad_(False)
    return pipe


def _train(pipeline, data, params, validate: bool):  # noqa: F811
    import copy

    seed_everything(params.seed)
    transformer = copy.deepcopy(pipeline.transformer)
    adapter = add_adapter(transformer, params)
    logged: list[tuple] = []
    validation = PeriodicValidation(
        params,
        transformer,
        validation_pairs(PAIRS, params),
        _load,
        lambda: copy.copy(pipeline).__class__(**{**pipeline.components, "transformer": transformer}),
        lambda key, value, step: logged.append((key, step)),
        lambda image, name: logged.append((name, image.size)),
    )
    on_step = (lambda step, metrics: validation(step + 1)) if validate else None
    train_loop(params, transformer, adapter, data, on_step=on_step)
    return adapter.state_dict(), logged, validation.steps


def test_validation_every_n_steps_logs_by_step_and_leaves_training_alone(pipeline, data):  # noqa: F811
    params = _params(
        max_train_steps=5,
        lora_dropout=0.1,  # train mode must come back after each validation
        validation_step_interval=2,
        num_eval_images=2,
        validation_resolution="32x32",
        validation_num_inference_steps=1,
    )
    with_validation, logged, steps = _train(pipeline, data, params, validate=True)
    assert steps == [2, 4]
    assert [entry for entry in logged if entry[0] == "val/psnr"] == [("val/psnr", 2), ("val/psnr", 4)]
    images = [entry[0] for entry in logged if entry[0].startswith("validation/")]
    assert images == [f"validation/step_00000{s}/eval__{i}.png" for s in (2, 4) for i in (0, 1)]
    without, _, _ = _train(pipeline, data, params, validate=False)
    assert _equal(with_validation, without)


def test_validation_prompts_are_rendered_on_the_eval_references(pipeline, data, tmp_path):  # noqa: F811
    import copy

    import torch

    from kontext_core.validate.prompts import validation_prompts

    (tmp_path / "prompts.json").write_text('{"night": "at night", "blue": "make it blue"}')
    params = _params(
        validation_step_interval=1,
        num_eval_images=2,
        validation_resolution="32x32",
        validation_num_inference_steps=1,
        validation_prompt="invert the colours",
        user_prompt_library="prompts.json",
    )
    prompts = validation_prompts(params, tmp_path)
    assert list(prompts) == ["validation_prompt", "night", "blue"]
    transformer = copy.deepcopy(pipeline.transformer)
    images: dict[str, Image.Image] = {}
    validation = PeriodicValidation(
        params,
        transformer,
        validation_pairs(PAIRS, params),
        _load,
        lambda: pipeline.__class__(**{**pipeline.components, "transformer": transformer}),
        lambda key, value, step: None,
        lambda image, name: images.__setitem__(name, image),
        prompts=prompts,
    )
    with torch.no_grad():
        validation(1)
    prompted = sorted(name for name in images if "/prompts/" in name)
    assert prompted == sorted(
        f"validation/step_000001/prompts/{short}/eval__{i}.png" for short in prompts for i in (0, 1)
    )
    # Each instruction is its own edit: the outputs differ between prompts on the same reference.
    night = images["validation/step_000001/prompts/night/eval__0.png"]
    blue = images["validation/step_000001/prompts/blue/eval__0.png"]
    assert night.tobytes() != blue.tobytes()
