"""Bucket math and crop plans against SimpleTuner's `TrainingSample` / `MultiaspectImage`.

The expected sizes below were worked out by hand from SimpleTuner's code at the commit in
config/simpletuner/ (calculate_new_size_by_pixel_edge / _by_pixel_area, calculate_target_size, the
croppers): bucket = the size trained on, intermediary = the size the image is resized to first
(its own aspect ratio kept), box = the cut from the intermediary to the bucket.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kontext_core.config import ConfigError, DatasetConfig, DatasetEntry
from kontext_core.data.buckets import apply_crop, bucket_and_intermediary, crop_plan, meets_minimum, target_size


def _entry(**kw) -> DatasetEntry:
    return DatasetEntry.model_validate({"id": "d", "type": "local", "instance_data_dir": "x", **kw})


# (image size, entry keys, bucket, intermediary), crop off (SimpleTuner's default).
CROP_OFF = [
    # pixel: the shorter edge is 512; 1000/600 -> int(512 * 1.67) = 855 -> 832 on the 64 grid;
    # intermediary keeps 1000:600 at height 512 -> int(512 * 1.6667) = 853.
    ((1000, 600), {"resolution": 512, "resolution_type": "pixel"}, (832, 512), (853, 512)),
    # portrait: width 512, int(512 / 0.6) = 853 -> 832; intermediary int(512 / 0.6) = 853.
    ((600, 1000), {"resolution": 512, "resolution_type": "pixel"}, (512, 832), (512, 853)),
    # pixel_area 1024 = 1.048576 MP: edge 1024, 1.5 -> round(1254/64) = 1280 x round(836/64) = 832;
    # intermediary 1248 x 832 is narrower than 1280, grown by 32 x int(32/1.5) = 21 -> 1280 x 853.
    ((1536, 1024), {"resolution": 1024, "resolution_type": "pixel_area"}, (1280, 832), (1280, 853)),
    # area 1.0 MP: edge round(1000/64) = 1024; 0.6 -> 768 x 1344; intermediary 768 x 1280, 64 short in
    # height -> grown by int(64 * 0.6) = 38 x 64 -> 806 x 1344.
    ((600, 1000), {"resolution": 1.0, "resolution_type": "area"}, (768, 1344), (806, 1344)),
    # pixel_area 128, a 2:1 image: bucket 192 x 64, intermediary 192 x 96 (not stretched to 192 x 64).
    ((200, 100), {"resolution": 128, "resolution_type": "pixel_area"}, (192, 64), (192, 96)),
    # a square image at a square bucket: resized straight to it (the demo's case).
    ((96, 96), {"resolution": 64, "resolution_type": "pixel_area"}, (64, 64), (64, 64)),
    # area 0.5 MP: the calculator's edge is 704, but a 1:1 bucket is SimpleTuner's pixel_resolution,
    # which snaps 0.5 MP to 768.
    ((1000, 1000), {"resolution": 0.5, "resolution_type": "area"}, (768, 768), (768, 768)),
]


@pytest.mark.parametrize(("size", "keys", "bucket", "intermediary"), CROP_OFF)
def test_crop_off_buckets_and_intermediaries_match_simpletuner(size, keys, bucket, intermediary):
    assert bucket_and_intermediary(*size, _entry(**keys)) == (bucket, intermediary)


@pytest.mark.parametrize(("size", "keys", "bucket", "intermediary"), CROP_OFF)
def test_crop_off_keeps_the_aspect_ratio_and_cuts_only_the_spare_pixels(size, keys, bucket, intermediary):
    plan = crop_plan(*size, _entry(**keys, crop_style="center"), 0, "k")
    resize, box = plan["resize"], plan["box"]
    # The resize keeps the source's aspect ratio to within the integer rounding of one edge.
    assert abs(resize[0] / resize[1] - size[0] / size[1]) <= 1.0 / min(resize)
    assert (box[2] - box[0], box[3] - box[1]) == bucket == tuple(plan["size"])
    # centre cut: SimpleTuner's int((intermediary - bucket) / 2)
    assert box[:2] == [(resize[0] - bucket[0]) // 2, (resize[1] - bucket[1]) // 2]
    pixels = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype("uint8")
    assert apply_crop(Image.fromarray(pixels), plan).size == bucket


def test_a_non_bucket_shape_is_not_stretched_without_crop():
    """A 2:1 image in a 3:1 bucket: the old plan stretched it to 192 x 64; now a circle stays round."""
    img = Image.new("RGB", (200, 100), "black")
    from PIL import ImageDraw

    ImageDraw.Draw(img).ellipse([60, 10, 140, 90], fill="white")  # an 80 px circle in the middle
    plan = crop_plan(200, 100, _entry(resolution=128, resolution_type="pixel_area", crop_style="center"), 0, "k")
    out = np.asarray(apply_crop(img, plan).convert("L")) > 128
    rows, cols = np.nonzero(out)
    width, height = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
    assert abs(width - 77) <= 2  # 80 px at scale 0.96, as wide as it was
    assert height <= 64 and width > height  # cut at top and bottom, not squashed


# Crop on: (image size, entry keys, bucket, intermediary, centre box left/top)
CROP_ON = [
    # square: bucket 512 x 512; the intermediary is the 1:1 size for the original, keeping 1000:600.
    ((1000, 600), {"resolution": 512, "resolution_type": "pixel", "crop_aspect": "square"}, (512, 512), (853, 512)),
    ((160, 96), {"resolution": 64, "resolution_type": "pixel_area", "crop_aspect": "square"}, (64, 64), (106, 64)),
    # preserve: as crop off.
    (
        (1536, 1024),
        {"resolution": 1024, "resolution_type": "pixel_area", "crop_aspect": "preserve"},
        (1280, 832),
        (1280, 853),
    ),
    # closest of [1.0, 1.5] to 1.4 is 1.5: 640 x 448 at 0.262 MP; intermediary 627 x 448 grown by 13 x 9.
    (
        (1400, 1000),
        {
            "resolution": 512,
            "resolution_type": "pixel_area",
            "crop_aspect": "closest",
            "crop_aspect_buckets": [1.0, 1.5],
        },
        (640, 448),
        (640, 457),
    ),
]


@pytest.mark.parametrize(("size", "keys", "bucket", "intermediary"), CROP_ON)
def test_crop_on_buckets_match_simpletuner(size, keys, bucket, intermediary):
    assert bucket_and_intermediary(*size, _entry(crop=True, **keys)) == (bucket, intermediary)


@pytest.mark.parametrize("style", ["center", "centre", "random", "corner"])
def test_crop_styles(style):
    entry = _entry(resolution=64, resolution_type="pixel_area", crop=True, crop_style=style)
    plan = crop_plan(160, 96, entry, 3, "a.png")
    left, top, right, bottom = plan["box"]
    assert (right - left, bottom - top) == (64, 64) and plan["resize"] == [106, 64]
    if style == "corner":
        assert (left, top) == (0, 0)
    elif style in ("center", "centre"):
        assert (left, top) == (21, 0)  # int((106 - 64) / 2)
    else:
        assert crop_plan(160, 96, entry, 3, "a.png") == plan  # deterministic per (seed, file)
        lefts = {crop_plan(160, 96, entry, 3, f"{i}.png")["box"][0] for i in range(20)}
        assert len(lefts) > 3 and all(0 <= x <= 106 - 64 for x in lefts)


def test_crop_off_cuts_by_crop_style_too():
    """SimpleTuner's crop-off resize hands the spare pixels to the dataset's cropper: random by default."""
    entry = _entry(resolution=128, resolution_type="pixel_area")
    assert entry.crop_style == "random"
    tops = {crop_plan(200, 100, entry, 0, f"{i}.png")["box"][1] for i in range(20)}
    assert len(tops) > 3 and all(0 <= t <= 32 for t in tops)
    assert crop_plan(200, 100, _entry(resolution=128, resolution_type="pixel_area", crop_style="corner"), 0, "k")[
        "box"
    ][:2] == [0, 0]


def test_face_crop_is_refused_in_one_line():
    entry = _entry(resolution=64, crop=True, crop_style="face")
    with pytest.raises((ConfigError, ValueError), match="crop_style = 'face' needs a face detector"):
        DatasetConfig(entries=[entry])


def test_pre_downsample_applies_with_crop_as_simpletuner_does():
    keys = {"resolution": 512, "resolution_type": "pixel", "maximum_image_size": 1024, "target_downsample_size": 768}
    # crop on: the intermediary is the image at target_downsample_size (768 short edge), cut to 512 x 512.
    assert bucket_and_intermediary(2000, 1500, _entry(crop=True, **keys)) == ((512, 512), (1024, 768))
    # crop off: SimpleTuner does not use them.
    assert bucket_and_intermediary(2000, 1500, _entry(**keys)) == bucket_and_intermediary(
        2000, 1500, _entry(resolution=512, resolution_type="pixel")
    )


def test_minimum_image_size_uses_the_resolution_unit():
    assert not meets_minimum(99, 200, _entry(resolution_type="pixel", minimum_image_size=100))
    assert meets_minimum(100, 200, _entry(resolution_type="pixel", minimum_image_size=100))
    assert not meets_minimum(60, 60, _entry(resolution_type="pixel_area", minimum_image_size=64))
    assert meets_minimum(32, 128, _entry(resolution_type="pixel_area", minimum_image_size=64))  # 4096 px area
    assert not meets_minimum(99, 100, _entry(resolution_type="area", minimum_image_size=0.01))
    assert meets_minimum(100, 100, _entry(resolution_type="area", minimum_image_size=0.01))


def test_aspect_ratio_is_rounded_so_near_shapes_share_a_bucket():
    entry = _entry(resolution=1024, resolution_type="pixel_area")
    assert target_size(1001, 1000, entry) == target_size(1000, 1000, entry) == (1024, 1024)
    for w, h in [(333, 777), (1920, 1080), (97, 61)]:
        bw, bh = target_size(w, h, entry)
        assert bw % 64 == 0 and bh % 64 == 0 and bw >= 64 and bh >= 64
