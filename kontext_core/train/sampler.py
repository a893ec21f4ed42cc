"""The deterministic epoch sampler: batches of one bucket, reproducible from (seed, epoch).

Every epoch shuffles the samples with a generator seeded by (seed, epoch), groups them by bucket
(target shape and the shapes of the chosen references), cuts each bucket into batches and shuffles
the batch order. A position (epoch, index) names the next batch, so a checkpoint that stores it
resumes on exactly the same data, and every process of a distributed run walks the same stream.

A dataset's SimpleTuner sampling keys (TrainSample.sampling) act here: `repeats` puts each sample
1 + repeats times into an epoch; `start_epoch`/`end_epoch` leave a dataset out of other epochs;
`probability` makes batches come from one dataset each, and the dataset of the next batch is drawn
with these weights among the datasets with batches left (0: never); `start_step`/`end_step` drop
a dataset's samples from batches trained outside that step range. With none of them set, the
stream is exactly the plain one.
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
        # Weighted draws only when a dataset asks for them: the plain stream stays as it was.
        self.weighted = any(s.sampling.probability != 1 for s in samples)
        self.step_windows = any(s.sampling.has_step_window for s in samples)

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
        order = [
            index
            for index, sample in enumerate(self.samples)
            if sample.sampling.in_epoch(epoch + 1)
            for _ in range(1 + sample.sampling.repeats)
        ]
        rng.shuffle(order)
        buckets: dict[tuple, list[BatchItem]] = {}
        for index in order:
            sample = self.samples[index]
            choice = self.reference_choice(sample, epoch)
            dataset = sample.dataset_id if self.weighted else None
            bucket = (dataset, sample.target_shape, tuple(sample.reference_shapes[i] for i in choice))
            buckets.setdefault(bucket, []).append(BatchItem(index, choice))
        groups = [
            items[start : start + self.batch_size]
            for items in buckets.values()
            for start in range(0, len(items), self.batch_size)
        ]
        rng.shuffle(groups)
        if self.weighted:
            groups = self._draw_datasets(groups, rng)
        if not groups:
            raise ValueError(f"no dataset is active in epoch {epoch + 1}: check start_epoch/end_epoch/probability")
        return [Batch(epoch, i, tuple(items)) for i, items in enumerate(groups)]

    def _draw_datasets(self, groups: list[list[BatchItem]], rng: random.Random) -> list[list[BatchItem]]:
        """Batch order by weighted draws of the dataset, as SimpleTuner picks a backend per step."""
        pools: dict[str, list[list[BatchItem]]] = {}
        for group in groups:
            pools.setdefault(self.samples[group[0].sample].dataset_id, []).append(group)
        weights = {d: self.samples[pool[0][0].sample].sampling.probability for d, pool in pools.items()}
        pools = {d: pool for d, pool in pools.items() if weights[d] > 0}
        drawn: list[list[BatchItem]] = []
        while pools:
            names = sorted(pools)
            name = rng.choices(names, weights=[weights[n] for n in names])[0]
            drawn.append(pools[name].pop(0))
            if not pools[name]:
                del pools[name]
        return drawn


class BatchStream:
    """An endless walk over the epochs' batches from a position; all processes walk the same one."""

    def __init__(self, sampler: EpochSampler, position: Position | None = None) -> None:
        self.sampler = sampler
        self.position = position or Position()

    def next(self, step: int | None = None) -> Batch:
        """The next batch; for the optimizer step `step` (1-based), without samples outside their step range."""
        if step is None or not self.sampler.step_windows:
            return self._advance()
        first_epoch = self.position.epoch
        while self.position.epoch <= first_epoch + 1:  # two whole epochs without one active sample: none is
            batch = self._advance()
            items = tuple(i for i in batch.items if self.sampler.samples[i.sample].sampling.at_step(step))
            if items:
                return Batch(batch.epoch, batch.index, items)
        raise ValueError(f"no dataset is active at step {step}: check start_step/end_step")

    def _advance(self) -> Batch:
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
