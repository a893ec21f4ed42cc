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


def _square(size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size), "black")
    img.paste((255, 255, 255), (16, 16, 48, 48))
    return img


def test_canny_draws_the_edges_of_a_square_and_nothing_else():
    edges = np.asarray(degrade(_square(), _gen(type="canny"), 0, "k").convert("L"))
    assert set(np.unique(edges)) == {0, 255}
    on = np.argwhere(edges == 255)
    # Every edge pixel lies on the square's border (one pixel either side), none inside or outside.
    near_border = ((np.abs(on - 16) <= 1) | (np.abs(on - 47) <= 1)).any(axis=1)
    assert near_border.all() and len(on) >= 4 * 30
    assert edges[20:44, 20:44].max() == 0 and edges[:8].max() == 0
    # A threshold above the strongest gradient (4 * 255 for a hard step) leaves no edges.
    assert (
        np.asarray(degrade(_square(), _gen(type="canny", low_threshold=2000, high_threshold=3000), 0, "k")).max() == 0
    )
    assert _gen(type="edges").type == "canny"  # SimpleTuner's alias


def test_canny_hysteresis_keeps_weak_edges_only_when_joined_to_strong_ones():
    img = Image.new("L", (64, 32), 0)
    img.paste(200, (0, 0, 20, 32))  # strong step at x = 20
    img.paste(30, (40, 0, 64, 32))  # weak step at x = 40, not connected to the strong one
    edges = np.asarray(degrade(img.convert("RGB"), _gen(type="canny", low_threshold=50, high_threshold=300), 0, "k"))
    assert edges[:, 18:22].max() == 255  # strong: |gx| = 4 * 200 = 800 > 300
    assert edges[:, 38:42].max() == 0  # weak: 4 * 30 = 120 is above low but not linked to a strong edge


def test_random_masks_are_seeded_per_file_and_follow_their_options():
    img = _picture(96)
    gen = _gen(
        type="random_masks", mask_types=["rectangle"], min_masks=1, max_masks=1, edge_blur=False, edge_feather=False
    )
    mask = np.asarray(degrade(img, gen, 3, "a").convert("L"))
    assert np.array_equal(mask, np.asarray(degrade(img, gen, 3, "a").convert("L")))  # same (seed, file)
    assert not np.array_equal(mask, np.asarray(degrade(img, gen, 3, "b").convert("L")))
    assert set(np.unique(mask)) == {0, 255}  # one hard-edged rectangle of mask_value
    rows, cols = np.nonzero(mask)
    assert (mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == 255).all()
    inverted = np.asarray(degrade(img, gen.model_copy(update={"invert_mask": True}), 3, "a").convert("L"))
    assert np.array_equal(inverted, 255 - mask)
    painted = np.asarray(degrade(img, gen.model_copy(update={"output_mode": "masked_image"}), 3, "a"))
    assert (painted[mask == 255] == 255).all() and np.array_equal(painted[mask == 0], np.asarray(img)[mask == 0])
    soft = np.asarray(degrade(img, _gen(type="random_masks"), 3, "a").convert("L"))
    assert len(np.unique(soft)) > 2  # blurred and feathered edges by default (SimpleTuner's)
    assert _gen(type="inpainting").type == "random_masks"


def test_jpeg_enhance_blocks_adds_noise_on_block_borders_only():
    img = _picture()
    base = {"type": "jpeg_artifacts", "quality": 50}
    plain = np.asarray(degrade(img, _gen(**base), 0, "k"), dtype=int)
    blocky = np.asarray(degrade(img, _gen(**base, enhance_blocks=True, block_noise_level=0.1), 0, "k"), dtype=int)
    changed = np.argwhere((plain != blocky).any(axis=2))
    assert len(changed) and ((changed[:, 0] % 8 == 0) | (changed[:, 1] % 8 == 0)).all()
    assert _gen(type="jpeg", round_quality_decay=0.5).quality_decay == 0.5  # SimpleTuner's names


def test_generators_needing_a_model_are_refused_in_one_line():
    from kontext_core.config import DatasetEntry

    with pytest.raises(ValueError, match="depth_midas.*needs a depth-estimation model download"):
        DatasetEntry.model_validate({"id": "d", "instance_data_dir": "x", "conditioning": [{"type": "depth_midas"}]})


def test_new_options_leave_existing_generated_addresses_alone():
    from kontext_core.data.degrade import generator_spec

    spec = generator_spec(_gen(type="superresolution"))
    assert "low_threshold" not in spec and "enhance_blocks" not in spec and "blur_radius" in spec
    assert generator_spec(_gen(type="jpeg_artifacts", enhance_blocks=True))["enhance_blocks"] is True


@pytest.mark.parametrize("spec", [{"type": "canny", "low_threshold": 40}, {"type": "random_masks", "max_masks": 2}])
def test_edges_and_masks_are_content_addressed_and_cached_like_the_others(tmp_path, spec):
    from kontext_core.data.degrade import generator_spec

    for i in range(2):
        _picture(32, seed=i).save(tmp_path / f"{i}.png")
    spec = generator_spec(_gen(**spec))  # what the pair table stores
    jobs = [GenerationJob.make(f"{i}.png", spec, f"{i}.png") for i in range(2)]
    first, made = generate_references(jobs, tmp_path, 7, tmp_path / "cache", workers=1)
    again, made_again = generate_references(jobs, tmp_path, 7, tmp_path / "cache", workers=1)
    assert made == 2 and made_again == 0 and again == first
    assert Image.open(first[jobs[0]]).size == (32, 32)
    changed = {**spec, "low_threshold": 41} if spec["type"] == "canny" else {**spec, "max_masks": 3}
    other, _ = generate_references([GenerationJob.make("0.png", changed, "0.png")], tmp_path, 7, tmp_path / "cache", 1)
    assert next(iter(other.values())) != first[jobs[0]]  # another option, another address
