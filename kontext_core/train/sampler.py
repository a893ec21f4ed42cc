"""The deterministic epoch sampler: batches of one bucket, reproducible from (seed, epoch).

Every epoch shuffles the samples with a generator seeded by (seed, epoch), groups them by bucket
(target shape and the shapes of the chosen references), cuts each bucket into batches and shuffles
the batch order. A position (epoch, index) names the next batch, so a checkpoint that stores it
resumes on exactly the same data, and every process of a distributed run walks the same stream.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from kontext_core.train.data import TrainSample


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes, unlike `hash`)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class BatchItem:
    sample: int  # index into the sample list
    references: tuple[int, ...]  # which reference sets feed this sample


@dataclass(frozen=True)
class Batch:
    epoch: int
    index: int
    items: tuple[BatchItem, ...]

    @property
    def seed_parts(self) -> tuple[int, int]:
        return self.epoch, self.index


@dataclass(frozen=True)
class Position:
    epoch: int = 0
    index: int = 0


class EpochSampler:
    def __init__(self, samples: list[TrainSample], batch_size: int, seed: int, mode: str) -> None:
        if not samples:
            raise ValueError("no training samples: the pair table has no train pairs")
        self.samples = samples
        self.batch_size = batch_size
        self.seed = seed
        self.mode = mode
        self._cache: dict[int, list[Batch]] = {}

    def reference_choice(self, sample: TrainSample, epoch: int) -> tuple[int, ...]:
        """All reference sets (`combined`), or one picked from (seed, epoch, key) (`random`)."""
        count = len(sample.references)
        if self.mode == "combined" or count <= 1:
            return tuple(range(count))
        return (random.Random(derive_seed(self.seed, epoch, sample.key)).randrange(count),)

    def batches(self, epoch: int) -> list[Batch]:
        if epoch not in self._cache:
            self._cache = {epoch: self._build(epoch)}
        return self._cache[epoch]

    def _build(self, epoch: int) -> list[Batch]:
        rng = random.Random(derive_seed(self.seed, "epoch", epoch))
        order = list(range(len(self.samples)))
        rng.shuffle(order)
        buckets: dict[tuple, list[BatchItem]] = {}
        for index in order:
            sample = self.samples[index]
            choice = self.reference_choice(sample, epoch)
            bucket = (sample.target_shape, tuple(sample.reference_shapes[i] for i in choice))
            buckets.setdefault(bucket, []).append(BatchItem(index, choice))
        groups = [
            items[start : start + self.batch_size]
            for items in buckets.values()
            for start in range(0, len(items), self.batch_size)
        ]
        rng.shuffle(groups)
        return [Batch(epoch, i, tuple(items)) for i, items in enumerate(groups)]


class BatchStream:
    """An endless walk over the epochs' batches from a position; all processes walk the same one."""

    def __init__(self, sampler: EpochSampler, position: Position | None = None) -> None:
        self.sampler = sampler
        self.position = position or Position()

    def next(self) -> Batch:
        batches = self.sampler.batches(self.position.epoch)
        batch = batches[self.position.index]
        if self.position.index + 1 < len(batches):
            self.position = Position(self.position.epoch, self.position.index + 1)
        else:
            self.position = Position(self.position.epoch + 1, 0)
        return batch


def steps_for_epochs(sampler: EpochSampler, epochs: int, batches_per_step: int) -> int:
    """Optimizer steps that cover `epochs` epochs when each step consumes `batches_per_step` batches."""
    total = sum(len(sampler.batches(epoch)) for epoch in range(epochs))
    return max(1, -(-total // batches_per_step))
