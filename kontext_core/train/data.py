"""What the trainer reads: the train pairs with their cached latents and caption embeddings.

Tensors are loaded per batch (a real dataset's latents and T5 embeddings do not fit in memory);
only shapes are read up front, from the safetensors headers, to form buckets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from kontext_core.cache.store import TensorStore

log = logging.getLogger(__name__)

Shape = tuple[int, int]  # latent (height, width)


@dataclass(frozen=True)
class Sampling:
    """A dataset's SimpleTuner sampling keys, as the pair table carries them (epochs are 1-based)."""

    repeats: int = 0  # each sample is seen 1 + repeats times per epoch
    probability: float = 1.0  # weight of the dataset when the next batch's dataset is drawn
    start_epoch: int = 1
    end_epoch: int | None = None
    start_step: int = 0
    end_step: int | None = None
    # Parent-teacher: the target is the base model's own prediction (the adapter switched off).
    is_regularisation_data: bool = False

    def in_epoch(self, epoch: int) -> bool:
        return self.start_epoch <= epoch and (self.end_epoch is None or epoch <= self.end_epoch)

    def at_step(self, step: int) -> bool:
        return self.start_step <= step and (self.end_step is None or step <= self.end_step)

    @property
    def has_step_window(self) -> bool:
        return self.start_step > 0 or self.end_step is not None


@dataclass(frozen=True)
class TrainSample:
    key: str  # the pair id: seeds the per-sample reference choice
    target: str  # latent key
    references: tuple[str, ...]  # latent keys, one per reference set (dataset)
    caption: str
    # A reference set's own caption replaces the pair's when that set is the one picked.
    reference_captions: tuple[str | None, ...]
    target_shape: Shape
    reference_shapes: tuple[Shape, ...]
    dataset_id: str = ""
    sampling: Sampling = Sampling()


@dataclass
class TrainData:
    samples: list[TrainSample]
    load_latents: Callable[[str], torch.Tensor]  # key -> (16, h, w)
    load_text: Callable[[str], tuple[torch.Tensor, torch.Tensor]]  # caption -> (prompt (T, D), pooled (D,))
    captions: set[str] = field(default_factory=set)  # captions that have embeddings


def _latent_shape(path: Path) -> Shape:
    with safe_open(str(path), "pt") as fh:
        shape = fh.get_slice("latents").get_shape()
    return int(shape[-2]), int(shape[-1])


@dataclass(frozen=True)
class CachePaths:
    """Where the upstream stages left what training reads (their declared products)."""

    pairs: Path  # the pair table
    vae_index: Path  # pair id -> latent keys
    latents: Path  # the latent store
    text_index: Path  # caption -> embedding key
    embeds: Path  # the embedding store

    def to_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> CachePaths:
        return cls(**{k: Path(v) for k, v in data.items()})


def load_cached_data(paths: CachePaths) -> TrainData:
    """The train split of the pair table over the latent and text-embedding caches."""
    pairs = [p for p in json.loads(paths.pairs.read_text()) if p["split"] == "train"]
    vae_index = json.loads(paths.vae_index.read_text())
    text_index: dict[str, str] = json.loads(paths.text_index.read_text())
    latents = TensorStore(paths.latents)
    embeds = TensorStore(paths.embeds)
    if "" not in text_index:
        raise RuntimeError(f"{paths.text_index}: the empty caption is missing; re-run cache_text")
    samples = []
    missing_captions: set[str] = set()
    for pair in pairs:
        keys = vae_index[pair["pair_id"]]
        ref_captions = []
        for ref in pair["references"]:
            caption = ref.get("caption")
            if caption is not None and caption not in text_index:
                missing_captions.add(caption)
                caption = None
            ref_captions.append(caption)
        samples.append(
            TrainSample(
                key=pair["pair_id"],
                target=keys["target"],
                references=tuple(keys["references"]),
                caption=pair["caption"],
                reference_captions=tuple(ref_captions),
                target_shape=_latent_shape(latents.path(keys["target"])),
                reference_shapes=tuple(_latent_shape(latents.path(k)) for k in keys["references"]),
                dataset_id=pair.get("dataset_id", ""),
                sampling=Sampling(**pair.get("sampling", {})),
            )
        )
    if missing_captions:
        log.warning("%d reference captions have no text embedding; using the pair captions", len(missing_captions))

    def load_text(caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        entry = embeds.get(text_index[caption])
        return entry["prompt_embeds"], entry["pooled_prompt_embeds"]

    return TrainData(samples, lambda key: latents.get(key)["latents"], load_text, set(text_index))
