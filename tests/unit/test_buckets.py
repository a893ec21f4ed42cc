"""Bucket math (SimpleTuner's pixel / area / pixel_area), size filters and crop plans."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kontext_core.config import DatasetEntry
from kontext_core.data.buckets import apply_crop, crop_plan, downsample_size, meets_minimum, target_size


def _entry(**kw) -> DatasetEntry:
    return DatasetEntry.model_validate({"id": "d", "type": "local", "instance_data_dir": "x", **kw})


def test_pixel_area_area_and_pixel_buckets():
    preserve = {"crop_aspect": "preserve"}
    # pixel_area: area = 1024², aspect 1.5 -> 1254 x 836 -> edges rounded to 64.
    assert target_size(1536, 1024, _entry(resolution=1024, resolution_type="pixel_area", **preserve)) == (1280, 832)
    # SimpleTuner's default (crop: false) keeps the aspect; a square crop makes a square bucket.
    assert target_size(1536, 1024, _entry(resolution=1024, resolution_type="pixel_area")) == (1280, 832)
    square = {"crop": True, "crop_aspect": "square"}
    assert target_size(1536, 1024, _entry(resolution=1024, resolution_type="pixel_area", **square)) == (1024, 1024)
    # area: megapixels.
    assert target_size(2000, 2000, _entry(resolution=1.0, resolution_type="area")) == (1024, 1024)
    # pixel: the shorter edge.
    assert target_size(1000, 500, _entry(resolution=512, resolution_type="pixel", **preserve)) == (1024, 512)
    assert target_size(500, 1000, _entry(resolution=512, resolution_type="pixel", **preserve)) == (512, 1024)


def test_aspect_ratio_is_rounded_to_two_decimals_so_near_shapes_share_a_bucket():
    entry = _entry(resolution=1024, resolution_type="pixel_area", crop_aspect="preserve")
    assert target_size(1001, 1000, entry) == target_size(1000, 1000, entry) == (1024, 1024)
    for w, h in [(333, 777), (1920, 1080), (97, 61)]:
        bw, bh = target_size(w, h, entry)
        assert bw % 64 == 0 and bh % 64 == 0 and bw >= 64 and bh >= 64


def test_minimum_image_size_uses_the_resolution_unit():
    assert not meets_minimum(99, 200, _entry(resolution_type="pixel", minimum_image_size=100))
    assert meets_minimum(100, 200, _entry(resolution_type="pixel", minimum_image_size=100))
    assert not meets_minimum(60, 60, _entry(resolution_type="pixel_area", minimum_image_size=64))
    assert meets_minimum(32, 128, _entry(resolution_type="pixel_area", minimum_image_size=64))  # 4096 px area
    assert not meets_minimum(99, 100, _entry(resolution_type="area", minimum_image_size=0.01))
    assert meets_minimum(100, 100, _entry(resolution_type="area", minimum_image_size=0.01))


def test_maximum_image_size_pre_downsamples_to_target_downsample_size():
    entry = _entry(resolution=64, resolution_type="pixel_area", maximum_image_size=128, target_downsample_size=96)
    assert downsample_size(256, 256, entry) == (96, 96)
    assert downsample_size(128, 128, entry) is None  # not above the maximum
    plan = crop_plan(256, 256, entry, 0, "k")
    assert plan["downsample"] == [96, 96] and plan["size"] == [64, 64]
    pixel = _entry(resolution=64, resolution_type="pixel", maximum_image_size=200, target_downsample_size=100)
    assert downsample_size(400, 300, pixel) == (133, 100)


@pytest.mark.parametrize("style", ["center", "random", "corner"])
def test_crop_styles(style):
    entry = _entry(resolution=64, resolution_type="pixel_area", crop=True, crop_style=style)
    plan = crop_plan(160, 96, entry, 3, "a.png")
    left, top, right, bottom = plan["box"]
    assert (right - left, bottom - top) == (64, 64) and plan["resize"] == [107, 64]
    if style == "corner":
        assert (left, top) == (0, 0)
    elif style == "center":
        assert (left, top) == ((107 - 64) // 2, 0)
    else:
        assert crop_plan(160, 96, entry, 3, "a.png") == plan  # deterministic per (seed, file)
        lefts = {crop_plan(160, 96, entry, 3, f"{i}.png")["box"][0] for i in range(20)}
        assert len(lefts) > 3 and all(0 <= x <= 107 - 64 for x in lefts)
    pixels = (np.random.default_rng(0).random((96, 160, 3)) * 255).astype("uint8")
    assert apply_crop(Image.fromarray(pixels), plan).size == (64, 64)


def test_without_crop_the_image_is_resized_to_its_bucket():
    entry = _entry(resolution=128, resolution_type="pixel_area", crop=False)
    plan = crop_plan(200, 100, entry, 0, "k")
    assert plan["size"] == [192, 64] and plan["resize"] == [192, 64] and plan["box"] == [0, 0, 192, 64]
