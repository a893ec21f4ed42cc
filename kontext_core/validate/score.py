"""Score a model on the eval set: eval loss plus every registered image metric of real edits.

The same function scores the base, the new adapter and (at registration) the current champion, so
every number compared comes from the same exam.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import FluxKontextPipeline
from PIL import Image

from kontext_core.config import Params
from kontext_core.validate.eval_loss import EvalLoss, EvalSet, compute_eval_loss, timestep_label
from kontext_core.validate.run import EvalResult, evaluate


@dataclass
class Scores:
    eval_loss: EvalLoss
    images: list[EvalResult]

    def metrics(self, suffix: str = "") -> dict[str, float]:
        """Flat numbers: `eval_loss`, one `eval_loss_tNNNN` per timestep, then each image metric's mean
        over the eval pairs (`psnr`, `ssim`, and any other registered one)."""
        out = {f"eval_loss{suffix}": self.eval_loss.mean}
        for sigma, value in self.eval_loss.per_timestep.items():
            out[f"eval_loss{suffix}_{timestep_label(sigma)}"] = value
        if self.images:
            for name in self.images[0].scores:
                out[f"{name}{suffix}"] = sum(r.scores[name] for r in self.images) / len(self.images)
        return out


def score(
    pipe: FluxKontextPipeline,
    eval_set: EvalSet,
    pairs: list[dict],
    load: Callable[[str], Image.Image],
    params: Params,
    device: torch.device,
    with_images: bool = True,
    desc: str = "validate",
) -> Scores:
    loss = compute_eval_loss(pipe.transformer, eval_set, device)
    images = evaluate(pipe, pairs, load, params, desc=desc) if with_images else []
    return Scores(loss, images)


def attach(pipe: FluxKontextPipeline, adapter_dir: Path, params: Params) -> None:
    """Put a saved adapter (of either kind) live on the pipeline's (possibly quantized) transformer."""
    from kontext_core.model.adapter_kinds import attach_saved_adapter

    attach_saved_adapter(pipe.transformer, Path(adapter_dir), params)
