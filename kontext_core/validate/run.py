"""Run `FluxKontextPipeline` on the eval pairs and score the outputs against the targets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import FluxKontextPipeline
from PIL import Image

from kontext_core.config import Params
from kontext_core.data.buckets import resize_and_crop
from kontext_core.progress import track
from kontext_core.validate.metrics import psnr


@dataclass
class EvalResult:
    pair_id: str
    caption: str
    reference: Image.Image
    output: Image.Image
    target: Image.Image
    psnr: float


def edit_image(
    pipe: FluxKontextPipeline,
    image: Image.Image,
    prompt: str,
    width: int,
    height: int,
    params: Params,
    seed: int,
) -> Image.Image:
    """One Kontext edit at an explicit size (the pipeline's own resizing is for 1 MP images)."""
    kwargs = {}
    if params.validation_guidance_real > 1:
        kwargs = {"true_cfg_scale": params.validation_guidance_real, "negative_prompt": ""}
    result = pipe(
        image=image,
        prompt=prompt,
        height=height,
        width=width,
        max_area=width * height,
        _auto_resize=False,
        guidance_scale=params.validation_guidance,
        num_inference_steps=params.validation_num_inference_steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        **kwargs,
    )
    return result.images[0]


def evaluate(
    pipe: FluxKontextPipeline,
    pairs: list[dict],
    load: Callable[[str], Image.Image],
    params: Params,
    desc: str = "validate",
) -> list[EvalResult]:
    width, height = params.validation_size
    results = []
    for index, pair in track(enumerate(pairs), desc, total=len(pairs), unit="pair"):
        reference = resize_and_crop(load(pair["references"][0]["image"]), (width, height))
        target = resize_and_crop(load(pair["target"]), (width, height))
        output = edit_image(pipe, reference, pair["caption"], width, height, params, params.validation_seed + index)
        results.append(
            EvalResult(
                pair_id=pair["pair_id"],
                caption=pair["caption"],
                reference=reference,
                output=output,
                target=target,
                psnr=psnr(output, target),
            )
        )
    return results


def grid_name(pair_id: str) -> str:
    return Path(pair_id.replace("/", "__")).with_suffix(".png").name
