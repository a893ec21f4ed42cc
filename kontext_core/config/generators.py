"""Sub-blocks of a dataset entry: the Hugging Face options and the reference generators."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

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


class ConditioningGenerator(Strict):
    """One `conditioning` entry: a reference set generated from the edit set's own images.

    `superresolution` blurs (and optionally downscales, adds noise, JPEG-compresses) each image;
    `jpeg_artifacts` recompresses it at low quality. An unknown key is an error naming the nearest
    known one: a misspelt generator parameter would otherwise fall back to its default unnoticed.
    """

    type: Literal["superresolution", "jpeg_artifacts"]
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
    # jpeg_artifacts
    quality_mode: Literal["fixed", "range", "random", "list"] = "fixed"
    quality: int = Field(25, ge=1, le=100)
    quality_range: tuple[int, int] = (10, 50)
    quality_list: list[int] | None = None
    compression_rounds: int = Field(1, ge=1)
    # Each further round compresses at quality * quality_decay**round (never below 1).
    quality_decay: float = Field(0.9, gt=0, le=1)
    subsampling: Literal["4:4:4", "4:2:2", "4:2:0"] | int | None = None
    pre_blur: bool | float = False

    def rule_problems(self) -> list[str]:
        problems = []
        low, high = self.quality_range
        if not 1 <= low <= high <= 100:
            problems.append(f"quality_range {list(self.quality_range)} must be [low, high] within 1..100")
        if self.quality_mode == "list" and not self.quality_list:
            problems.append("quality_mode 'list' needs a non-empty quality_list")
        if self.quality_list and not all(1 <= q <= 100 for q in self.quality_list):
            problems.append(f"quality_list {self.quality_list} must hold qualities within 1..100")
        return problems

    @property
    def caption_choices(self) -> list[str]:
        if self.captions is None or isinstance(self.captions, bool):
            return []
        return [self.captions] if isinstance(self.captions, str) else list(self.captions)
