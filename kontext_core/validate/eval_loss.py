"""Eval loss: the flow-matching loss on the eval pairs at fixed timesteps with fixed noise.

SimpleTuner's eval loss (after "Demystifying SD fine-tuning") scores a model by its training loss
on held-out images, but with the randomness taken out: the same timesteps, spread evenly over the
schedule (`eval_timesteps` of them), and the same noise for every model scored. Two adapters (or an
adapter and its base) scored this way differ only by what they learnt, so the mean is a stable
number to rank versions by (lower is better).

The eval pairs are read from the same caches training reads (latents cropped by each pair's own
plan and bucket, loose references at their own size), and conditioned as training conditions them:
every reference at once under `combined` sampling, each reference set in turn under `random`.
The loss is MSE on the target tokens whatever `loss_type` says, so scores stay comparable across
runs that train with another loss.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kontext_core.cache.store import TensorStore
from kontext_core.config import Params
from kontext_core.fsutil import sha256_json
from kontext_core.model.kontext_step import StepInputs, kontext_step


@dataclass(frozen=True)
class EvalItem:
    """One conditioning of one eval pair: its target, the references shown, the caption used."""

    pair_id: str
    target: str  # latent key
    references: tuple[str, ...]  # latent keys
    caption: str


@dataclass
class EvalLoss:
    mean: float
    per_timestep: dict[float, float]  # sigma -> mean over the eval items
    per_pair: dict[str, float] = field(default_factory=dict)


def eval_sigmas(count: int) -> list[float]:
    """`count` sigmas at the midpoints of equal slices of (0, 1): no pure-noise or clean-image extremes."""
    return [round((index + 0.5) / count, 6) for index in range(count)]


def timestep_label(sigma: float) -> str:
    """Metric name suffix in the scheduler's units (sigma x 1000), e.g. `t0500`."""
    return f"t{round(sigma * 1000):04d}"


def eval_items(pairs: list[dict], vae_index: dict, sampling: str, text_captions: set[str]) -> list[EvalItem]:
    items = []
    for pair in pairs:
        keys = vae_index[pair["pair_id"]]
        refs = keys["references"]
        if sampling == "combined" or len(refs) <= 1:
            items.append(EvalItem(pair["pair_id"], keys["target"], tuple(refs), pair["caption"]))
            continue
        for ref_key, ref in zip(refs, pair["references"], strict=True):
            # A reference set's own caption replaces the pair's when that set is shown (as in training).
            caption = ref.get("caption")
            caption = caption if caption is not None and caption in text_captions else pair["caption"]
            items.append(EvalItem(pair["pair_id"], keys["target"], (ref_key,), caption))
    return items


def noise_seed(seed: int, item: EvalItem, sigma_index: int) -> int:
    """A seed per (pair, references, timestep): the same noise whichever model or order scores it."""
    text = f"eval-noise:{seed}:{item.pair_id}:{','.join(item.references)}:{sigma_index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@dataclass
class EvalSet:
    """The eval pairs over the caches, plus what identifies the exam (its fingerprint)."""

    items: list[EvalItem]
    sigmas: list[float]
    seed: int
    guidance: float
    load_latents: Callable[[str], torch.Tensor]
    load_text: Callable[[str], tuple[torch.Tensor, torch.Tensor]]
    text_keys: dict[str, str]

    def fingerprint(self, extra: dict | None = None) -> str:
        """Changes whenever the scores could: the pairs' content, sigmas, seed, guidance, this code."""
        material = {
            "items": [[i.pair_id, i.target, list(i.references), self.text_keys[i.caption]] for i in self.items],
            "sigmas": self.sigmas,
            "seed": self.seed,
            "guidance": self.guidance,
            "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16],
            **(extra or {}),
        }
        return sha256_json(material)

    def describe(self) -> dict:
        return {
            "pairs": sorted({i.pair_id for i in self.items}),
            "items": len(self.items),
            "sigmas": self.sigmas,
            "seed": self.seed,
            "guidance": self.guidance,
        }


def load_eval_set(workdir: Path, params: Params, pairs: list[dict]) -> EvalSet:
    workdir = Path(workdir)
    vae_index = json.loads((workdir / "cache/vae/index.json").read_text())
    text_index: dict[str, str] = json.loads((workdir / "cache/text/index.json").read_text())
    latents = TensorStore(workdir / "cache/vae/latents")
    embeds = TensorStore(workdir / "cache/text/embeds")

    def load_text(caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        entry = embeds.get(text_index[caption])
        return entry["prompt_embeds"], entry["pooled_prompt_embeds"]

    return EvalSet(
        items=eval_items(pairs, vae_index, params.conditioning_multidataset_sampling, set(text_index)),
        sigmas=eval_sigmas(params.eval_timesteps),
        seed=params.validation_seed,
        guidance=float(params.flux_guidance_value),
        load_latents=lambda key: latents.get(key)["latents"],
        load_text=load_text,
        text_keys=text_index,
    )


@torch.no_grad()
def compute_eval_loss(transformer: torch.nn.Module, eval_set: EvalSet, device: torch.device) -> EvalLoss:
    """The loss of `transformer` (with whatever adapter it carries) on every item at every sigma."""
    dtype = next(transformer.parameters()).dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        dtype = torch.float32
    by_sigma: dict[float, list[float]] = {s: [] for s in eval_set.sigmas}
    by_pair: dict[str, list[float]] = {}
    for item in eval_set.items:
        x0 = eval_set.load_latents(item.target)[None]
        prompt, pooled = eval_set.load_text(item.caption)
        inputs = StepInputs(
            target_latents=x0.to(device, dtype),
            reference_latents=[eval_set.load_latents(k)[None].to(device, dtype) for k in item.references],
            prompt_embeds=prompt[None].to(device, dtype),
            pooled_prompt_embeds=pooled[None].to(device, dtype),
        )
        for index, sigma in enumerate(eval_set.sigmas):
            # Noise is drawn on the CPU: the same numbers on every device.
            generator = torch.Generator().manual_seed(noise_seed(eval_set.seed, item, index))
            noise = torch.randn(x0.shape, generator=generator).to(device, dtype)
            out = kontext_step(
                transformer, inputs, noise, torch.tensor([sigma], device=device), guidance=eval_set.guidance
            )
            value = float(out.loss)
            by_sigma[sigma].append(value)
            by_pair.setdefault(item.pair_id, []).append(value)
    per_timestep = {s: sum(v) / len(v) for s, v in by_sigma.items()}
    return EvalLoss(
        mean=sum(per_timestep.values()) / len(per_timestep),
        per_timestep=per_timestep,
        per_pair={k: sum(v) / len(v) for k, v in by_pair.items()},
    )
