"""Sub-blocks of a dataset entry: the Hugging Face options and the reference generators."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from kontext_core.config.base import Strict


class CompositeImageConfig(Strict):
    enabled: bool = False
    image_count: int = Field(1, ge=1)
    select_index: int = Field(0, ge=0)

    def rule_problems(self) -> list[str]:
        if self.select_index >= self.image_count:
            return [f"select_index {self.select_index} must be below image_count {self.image_count}"]
        return []


class HuggingfaceOptions(Strict):
    """SimpleTuner's `huggingface: {...}` block of a dataset entry.

    `caption_column` is a column name or a dotted path into struct columns (`description.description_1`),
    or a list of them (the first non-empty value wins, then `fallback_caption_column`).
    """

    NOT_APPLICABLE: ClassVar[dict[str, str]] = {
        "width_column": "sizes always come from the image header",
        "height_column": "sizes always come from the image header",
        "streaming": "rows are read from memory-mapped Arrow files either way",
        "num_proc": "header scans use their own worker pool",
    }
    HARMLESS: ClassVar[dict[str, object]] = {"streaming": False, "width_column": None, "height_column": None}

    caption_column: str | list[str] | None = "caption"
    fallback_caption_column: str | None = None
    image_column: str = "image"
    composite_image_config: CompositeImageConfig = CompositeImageConfig()
    width_column: str | None = None
    height_column: str | None = None
    streaming: bool = False
    num_proc: int | None = Field(None, ge=1)


# SimpleTuner's other names for the generators here (its GENERATOR_REGISTRY aliases).
GENERATOR_ALIASES = {
    "super_resolution": "superresolution",
    "lowres": "superresolution",
    "jpeg": "jpeg_artifacts",
    "compression": "jpeg_artifacts",
    "masks": "random_masks",
    "inpainting": "random_masks",
    "edges": "canny",
}
# SimpleTuner generators this pipeline refuses, with the reason (one line at config check).
REFUSED_GENERATORS = {
    **dict.fromkeys(("depth", "depth_map", "depth_midas"), "needs a depth-estimation model download (MiDaS/DPT)"),
    **dict.fromkeys(("optical_flow", "flow"), "needs an optical-flow model download (RAFT) and video input"),
    **dict.fromkeys(("segmentation", "semantic_segmentation"), "needs a segmentation model download (Mask2Former)"),
    **dict.fromkeys(
        ("sdr", "sdr_downsample", "logc3_sdr", "hdr_to_sdr"),
        "converts HDR video sources, which this pipeline does not read",
    ),
    **dict.fromkeys(
        ("i2v_first_frame", "wan_i2v_first_frame"), "makes first frames of videos; this pipeline trains images"
    ),
}
GENERATOR_TYPES = ("superresolution", "jpeg_artifacts", "canny", "random_masks")
# Options added after generated references were first cached: left out of a generator's content
# address while at their default, so references cached before they existed keep their addresses.
LATER_OPTIONS = (
    "pre_blur_radius optimize progressive enhance_blocks block_noise_level low_threshold high_threshold "
    "mask_types mask_type_weights min_coverage max_coverage min_masks max_masks rect_min_size rect_max_size "
    "circle_min_radius circle_max_radius brush_min_width brush_max_width brush_min_length brush_max_length "
    "irregular_min_points irregular_max_points edge_blur edge_blur_radius edge_feather output_mode mask_value "
    "invert_mask"
).split()


class ConditioningGenerator(Strict):
    """One `conditioning` entry: a reference set generated from the edit set's own images.

    `superresolution` blurs (and optionally downscales, adds noise, JPEG-compresses) each image;
    `jpeg_artifacts` recompresses it at low quality; `canny` draws its edges (white on black);
    `random_masks` draws random mask shapes, as the mask itself or painted white over the image.
    Options and defaults are SimpleTuner's. An unknown key is an error naming the nearest known one:
    a misspelt generator parameter would otherwise fall back to its default unnoticed.
    """

    OTHER_KNOWN_KEYS: ClassVar[frozenset[str]] = frozenset({"round_quality_decay"})

    type: Literal["superresolution", "jpeg_artifacts", "canny", "random_masks"]
    # A caption, a list (one picked per image, deterministically), or false/null: keep the edit's.
    captions: str | list[str] | bool | None = None
    conditioning_type: Literal["reference_strict", "reference_loose"] = "reference_strict"
    # superresolution
    blur_radius: float = Field(2.0, ge=0)
    blur_type: Literal["gaussian", "box", "both"] = "gaussian"
    add_noise: bool = True
    noise_level: float = Field(0.02, ge=0)
    downscale_factor: float = Field(1.0, ge=1)
    jpeg_quality: int | None = Field(None, ge=1, le=100)
    # jpeg_artifacts ("list" is this pipeline's older name for SimpleTuner's "random": one of quality_list)
    quality_mode: Literal["fixed", "range", "random", "list"] = "fixed"
    quality: int = Field(25, ge=1, le=100)
    quality_range: tuple[int, int] = (10, 50)
    quality_list: list[int] | None = None
    compression_rounds: int = Field(1, ge=1)
    # Each further round compresses at int(quality * quality_decay**round), within 1..95 (SimpleTuner's
    # round_quality_decay, accepted under that name too).
    quality_decay: float = Field(0.9, gt=0, le=1)
    subsampling: Literal["4:4:4", "4:2:2", "4:2:0"] | int | None = None
    pre_blur: bool | float = False
    pre_blur_radius: float = Field(0.5, ge=0)
    optimize: bool = False
    progressive: bool = False
    # Gaussian noise of block_noise_level on the 8x8 block borders after compression.
    enhance_blocks: bool = False
    block_noise_level: float = Field(0.02, ge=0)
    # canny: hysteresis thresholds on the gradient magnitude of the 0..255 grey image
    low_threshold: float = Field(50, ge=0)
    high_threshold: float = Field(100, ge=0)
    # random_masks
    mask_types: list[Literal["rectangle", "circle", "brush", "irregular"]] = Field(
        default_factory=lambda: ["rectangle", "circle", "brush", "irregular"]
    )
    mask_type_weights: list[float] | None = None
    min_coverage: float = Field(0.1, ge=0, le=1)
    max_coverage: float = Field(0.5, ge=0, le=1)
    min_masks: int = Field(1, ge=0)
    max_masks: int = Field(5, ge=0)
    rect_min_size: float = Field(0.1, gt=0, le=1)
    rect_max_size: float = Field(0.4, gt=0, le=1)
    circle_min_radius: float = Field(0.05, gt=0, le=0.5)
    circle_max_radius: float = Field(0.2, gt=0, le=0.5)
    brush_min_width: int = Field(5, ge=1)
    brush_max_width: int = Field(40, ge=1)
    brush_min_length: float = Field(0.1, gt=0)
    brush_max_length: float = Field(0.5, gt=0)
    irregular_min_points: int = Field(5, ge=3)
    irregular_max_points: int = Field(20, ge=3)
    edge_blur: bool = True
    edge_blur_radius: float = Field(2.0, ge=0)
    edge_feather: bool = True
    output_mode: Literal["mask", "masked_image"] = "mask"
    mask_value: int = Field(255, ge=0, le=255)
    invert_mask: bool = False

    @model_validator(mode="before")
    @classmethod
    def _simpletuner_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        kind = data.get("type")
        if isinstance(kind, str) and kind in REFUSED_GENERATORS:
            raise ValueError(
                f"type = {kind!r}: {REFUSED_GENERATORS[kind]}, which this pipeline does not do; "
                f"allowed: {', '.join(GENERATOR_TYPES)}"
            )
        if isinstance(kind, str) and kind in GENERATOR_ALIASES:
            data["type"] = GENERATOR_ALIASES[kind]
        if data.get("conditioning_type") == "controlnet":
            # SimpleTuner's kind for ControlNet models: a Kontext model takes the generated image as its
            # reference, cut with the edit image's own plan, which is reference_strict.
            data["conditioning_type"] = "reference_strict"
        if "round_quality_decay" in data:
            data.setdefault("quality_decay", data.pop("round_quality_decay"))
        return data

    def rule_problems(self) -> list[str]:
        problems = []
        low, high = self.quality_range
        if not 1 <= low <= high <= 100:
            problems.append(f"quality_range {list(self.quality_range)} must be [low, high] within 1..100")
        if self.quality_mode == "list" and not self.quality_list:
            problems.append("quality_mode 'list' needs a non-empty quality_list")
        if self.quality_list and not all(1 <= q <= 100 for q in self.quality_list):
            problems.append(f"quality_list {self.quality_list} must hold qualities within 1..100")
        for low_key, high_key in (
            ("low_threshold", "high_threshold"),
            ("min_coverage", "max_coverage"),
            ("min_masks", "max_masks"),
            ("rect_min_size", "rect_max_size"),
            ("circle_min_radius", "circle_max_radius"),
            ("brush_min_width", "brush_max_width"),
            ("brush_min_length", "brush_max_length"),
            ("irregular_min_points", "irregular_max_points"),
        ):
            if getattr(self, low_key) > getattr(self, high_key):
                problems.append(f"{low_key} = {getattr(self, low_key)} is above {high_key} = {getattr(self, high_key)}")
        if self.type == "random_masks" and not self.mask_types:
            problems.append("mask_types must name at least one of rectangle, circle, brush, irregular")
        if self.mask_type_weights is not None and (
            len(self.mask_type_weights) != len(self.mask_types)
            or any(w < 0 for w in self.mask_type_weights)
            or sum(self.mask_type_weights) <= 0
        ):
            problems.append("mask_type_weights must give one non-negative weight per mask_types entry (not all 0)")
        return problems

    @property
    def caption_choices(self) -> list[str]:
        if self.captions is None or isinstance(self.captions, bool):
            return []
        return [self.captions] if isinstance(self.captions, str) else list(self.captions)
