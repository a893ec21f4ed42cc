"""Generated references: every option changes the pixels it should, deterministically, resumably, in parallel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kontext_core.config import ConditioningGenerator
from kontext_core.data.degrade import degrade, jpeg_quality, pick_caption
from kontext_core.data.generators import GenerationJob, generate_references


def _picture(size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8"))


def _sharpness(img: Image.Image) -> float:
    return float(np.abs(np.diff(np.asarray(img.convert("L"), dtype=float), axis=1)).mean())


def _gen(**kw) -> ConditioningGenerator:
    return ConditioningGenerator.model_validate(kw)


def test_superresolution_options():
    img = _picture()
    plain = degrade(img, _gen(type="superresolution", blur_radius=1.0, add_noise=False), 1, "k")
    assert plain.size == img.size and _sharpness(plain) < _sharpness(img)
    box = degrade(img, _gen(type="superresolution", blur_radius=1.0, blur_type="box", add_noise=False), 1, "k")
    both = degrade(img, _gen(type="superresolution", blur_radius=1.0, blur_type="both", add_noise=False), 1, "k")
    assert _sharpness(both) < min(_sharpness(box), _sharpness(plain))
    down = degrade(img, _gen(type="superresolution", blur_radius=0, add_noise=False, downscale_factor=4), 1, "k")
    assert down.size == img.size and _sharpness(down) < _sharpness(img)  # back at the source size
    noisy = _gen(type="superresolution", blur_radius=1.0, add_noise=True, noise_level=0.1)
    a, b = (np.asarray(degrade(img, noisy, 1, key)) for key in ("k", "other"))
    assert np.array_equal(a, np.asarray(degrade(img, noisy, 1, "k"))) and not np.array_equal(a, b)
    jpeg = degrade(img, _gen(type="superresolution", blur_radius=0, add_noise=False, jpeg_quality=10), 1, "k")
    assert not np.array_equal(np.asarray(jpeg), np.asarray(img))


def test_jpeg_quality_modes():
    rng = np.random.default_rng(0)
    assert jpeg_quality(_gen(type="jpeg_artifacts", quality=33), rng) == 33
    ranged = {
        jpeg_quality(_gen(type="jpeg_artifacts", quality_mode="range", quality_range=[10, 30]), rng) for _ in range(200)
    }
    assert ranged <= set(range(10, 31)) and len(ranged) > 10
    listed = {
        jpeg_quality(_gen(type="jpeg_artifacts", quality_mode="list", quality_list=[5, 50]), rng) for _ in range(50)
    }
    assert listed == {5, 50}
    # SimpleTuner's "random": one of quality_list, its default list [10, 20, 30, 40] when none is given.
    randoms = {jpeg_quality(_gen(type="jpeg_artifacts", quality_mode="random"), rng) for _ in range(50)}
    assert randoms == {10, 20, 30, 40}
    with pytest.raises(ValueError, match="quality_list"):
        _gen(type="jpeg_artifacts", quality_mode="list")


def test_jpeg_rounds_subsampling_pre_blur_and_noise_each_change_the_result():
    img = _picture()
    base = dict(type="jpeg_artifacts", quality=40)
    outputs = {
        "one": degrade(img, _gen(**base), 3, "k"),
        "two": degrade(img, _gen(**base, compression_rounds=2), 3, "k"),
        "444": degrade(img, _gen(**base, subsampling="4:4:4"), 3, "k"),
        "blur": degrade(img, _gen(**base, pre_blur=1.0), 3, "k"),
        "noise": degrade(img, _gen(**base, add_noise=True, noise_level=0.1), 3, "k"),
    }
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    names = list(arrays)
    for i, a in enumerate(names):
        assert arrays[a].shape == (64, 64, 3)
        for b in names[i + 1 :]:
            assert not np.array_equal(arrays[a], arrays[b]), (a, b)
    assert np.array_equal(arrays["two"], np.asarray(degrade(img, _gen(**base, compression_rounds=2), 3, "k")))


def test_captions_string_list_or_false():
    assert pick_caption(_gen(type="superresolution", captions="deblur"), 0, "k") == "deblur"
    listed = _gen(type="superresolution", captions=["a", "b", "c"])
    picks = {pick_caption(listed, 0, f"k{i}") for i in range(30)}
    assert picks == {"a", "b", "c"} and pick_caption(listed, 0, "k1") == pick_caption(listed, 0, "k1")
    assert pick_caption(_gen(type="superresolution", captions=False), 0, "k") is None


def test_outputs_are_content_addressed_reused_and_the_same_in_parallel(tmp_path):
    for i in range(4):
        _picture(32, seed=i).save(tmp_path / f"{i}.png")
    spec = {"type": "jpeg_artifacts", "quality_mode": "range", "quality_range": [10, 30], "compression_rounds": 2}
    jobs = [GenerationJob.make(f"{i}.png", spec, f"{i}.png") for i in range(4)]
    serial, made = generate_references(jobs, tmp_path, 7, tmp_path / "serial", workers=1)
    assert made == 4 and all(p.exists() for p in serial.values())
    again, made_again = generate_references(jobs, tmp_path, 7, tmp_path / "serial", workers=1)
    assert made_again == 0 and again == serial
    # An interrupted run: one output missing, the others are reused.
    serial[jobs[2]].unlink()
    assert generate_references(jobs, tmp_path, 7, tmp_path / "serial", workers=1)[1] == 1
    parallel, made_parallel = generate_references(jobs, tmp_path, 7, tmp_path / "parallel", workers=2)
    assert made_parallel == 4
    for job in jobs:
        assert parallel[job].name == serial[job].name
        assert parallel[job].read_bytes() == serial[job].read_bytes()
    other_seed, _ = generate_references(jobs[:1], tmp_path, 8, tmp_path / "serial", workers=1)
    assert other_seed[jobs[0]] != serial[jobs[0]]
    assert not list((tmp_path / "serial").rglob("*.tmp"))
