"""Run `FluxKontextPipeline` on the eval pairs and score the outputs against the targets.

Each eval pair is shown to the pipeline the way training shows it to the transformer: the target's
own crop plan and bucket set the output size (or `validation_resolution`, when set), a strict
reference is cropped with that plan, a loose one with its own plan at its own size, and under
`combined` sampling every reference is shown (placed side by side in one image, which is how
training lays several references out in latent space).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import FluxKontextPipeline
from PIL import Image

from kontext_core.cache.text_cache import sequence_length
from kontext_core.config import Params
from kontext_core.data.buckets import RESAMPLE, apply_crop, resize_and_crop
from kontext_core.progress import track
from kontext_core.validate.metrics import image_metrics


@dataclass
class EvalResult:
    pair_id: str
    caption: str
    reference: Image.Image
    output: Image.Image
    target: Image.Image
    # Each registered image metric's score of this edit against its target (kontext_core.validate.metrics).
    scores: dict[str, float]


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
        max_sequence_length=sequence_length(params),
        num_inference_steps=params.validation_num_inference_steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        **kwargs,
    )
    return result.images[0]


def _cropped(load: Callable[[str], Image.Image], item: dict) -> Image.Image:
    plan = item.get("crop")
    image = load(item["image"] if "image" in item else item["target"])
    return apply_crop(image, plan) if plan else resize_and_crop(image, tuple(item["size"]))


def side_by_side(images: list[Image.Image]) -> Image.Image:
    """References in one image, left to right (taller ones scaled to the first one's height)."""
    if len(images) == 1:
        return images[0]
    height = images[0].height
    scaled = [
        im if im.height == height else im.resize((round(im.width * height / im.height), height), RESAMPLE)
        for im in images
    ]
    # Edges stay multiples of 16 (VAE 8 x 2x2 packing): references on the bucket grid already are.
    canvas = Image.new("RGB", (sum(im.width for im in scaled), height))
    x = 0
    for im in scaled:
        canvas.paste(im.convert("RGB"), (x, 0))
        x += im.width
    return canvas


def conditioned_inputs(
    pair: dict, load: Callable[[str], Image.Image], sampling: str
) -> tuple[Image.Image, Image.Image, str]:
    """(reference image, target image, caption) of an eval pair, cropped by the pair table's plans."""
    target = _cropped(load, {"target": pair["target"], "crop": pair.get("crop"), "size": pair["size"]})
    refs = pair["references"] if sampling == "combined" else pair["references"][:1]
    reference = side_by_side([_cropped(load, ref) for ref in refs])
    caption = pair["caption"]
    if sampling == "random" and len(pair["references"]) > 1 and refs[0].get("caption"):
        caption = refs[0]["caption"]
    return reference, target, caption


def render_size(params: Params, target: Image.Image) -> tuple[Image.Image, int, int]:
    """The size an edit renders at: `validation_resolution` when set (the target is then resized to
    cover it and centre-cut, so the score compares like with like), else the target's own bucket."""
    size = params.validation_size
    if size is None or size == target.size:
        return target, target.width, target.height
    return resize_and_crop(target, size), size[0], size[1]


def evaluate(
    pipe: FluxKontextPipeline,
    pairs: list[dict],
    load: Callable[[str], Image.Image],
    params: Params,
    desc: str = "validate",
) -> list[EvalResult]:
    results = []
    for index, pair in track(enumerate(pairs), desc, total=len(pairs), unit="pair"):
        reference, target, caption = conditioned_inputs(pair, load, params.conditioning_multidataset_sampling)
        target, width, height = render_size(params, target)
        output = edit_image(pipe, reference, caption, width, height, params, params.validation_seed + index)
        results.append(
            EvalResult(
                pair_id=pair["pair_id"],
                caption=caption,
                reference=reference,
                output=output,
                target=target,
                scores={m.name: m.compute(output, target) for m in image_metrics() if m.compute is not None},
            )
        )
    return results


def prompted_edits(
    pipe: FluxKontextPipeline,
    pairs: list[dict],
    load: Callable[[str], Image.Image],
    params: Params,
    prompts: dict[str, str],
) -> list[tuple[str, EvalResult]]:
    """Each prompt of the validation prompt library on each pair's reference: (shortname, result).

    The target is shown for orientation; a score against it means little for another instruction,
    so nothing scores these edits.
    """
    results = []
    for shortname, prompt in prompts.items():
        for index, pair in enumerate(pairs):
            reference, target, _ = conditioned_inputs(pair, load, params.conditioning_multidataset_sampling)
            target, width, height = render_size(params, target)
            output = edit_image(pipe, reference, prompt, width, height, params, params.validation_seed + index)
            result = EvalResult(pair["pair_id"], prompt, reference, output, target, {})
            results.append((shortname, result))
    return results


def grid_name(pair_id: str) -> str:
    return Path(pair_id.replace("/", "__")).with_suffix(".png").name
