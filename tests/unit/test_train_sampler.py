"""The epoch sampler: one bucket per batch, deterministic per (seed, epoch), a resumable position."""

from __future__ import annotations

import torch

from kontext_core.config import Params
from kontext_core.train.data import TrainData, TrainSample
from kontext_core.train.loop import make_batch
from kontext_core.train.sampler import BatchStream, EpochSampler, Position, steps_for_epochs


def _sample(i: int, shape=(8, 8), refs=((8, 8),), ref_captions=None) -> TrainSample:
    return TrainSample(
        key=f"ds/{i:03d}",
        target=f"t{i}",
        references=tuple(f"r{i}.{j}" for j in range(len(refs))),
        caption=f"caption {i}",
        reference_captions=tuple(ref_captions or [None] * len(refs)),
        target_shape=shape,
        reference_shapes=tuple(refs),
    )


def _mixed() -> list[TrainSample]:
    return [_sample(i, (8, 8) if i % 3 else (6, 10), ((8, 8),) if i % 2 else ((4, 4),)) for i in range(12)]


def test_every_batch_holds_one_bucket_and_every_sample_comes_once_per_epoch():
    samples = _mixed()
    sampler = EpochSampler(samples, batch_size=2, seed=7, mode="combined")
    for epoch in range(3):
        batches = sampler.batches(epoch)
        seen = sorted(item.sample for b in batches for item in b.items)
        assert seen == list(range(len(samples)))
        for batch in batches:
            shapes = {(samples[i.sample].target_shape, samples[i.sample].reference_shapes) for i in batch.items}
            assert len(shapes) == 1


def test_order_depends_on_seed_and_epoch_only():
    samples = _mixed()
    order = lambda s, e: [i.sample for b in EpochSampler(samples, 2, s, "random").batches(e) for i in b.items]  # noqa: E731
    assert order(7, 0) == order(7, 0)
    assert order(7, 0) != order(7, 1)
    assert order(7, 0) != order(8, 0)


def test_random_picks_one_reference_set_per_sample_and_combined_feeds_all():
    samples = [_sample(i, refs=((8, 8), (8, 8), (8, 8))) for i in range(30)]
    random_sampler = EpochSampler(samples, 1, 3, "random")
    picks = [random_sampler.reference_choice(s, 0) for s in samples]
    assert all(len(p) == 1 for p in picks)
    assert len({p[0] for p in picks}) == 3  # all three sets get used
    assert picks == [EpochSampler(samples, 1, 3, "random").reference_choice(s, 0) for s in samples]
    assert picks != [random_sampler.reference_choice(s, 1) for s in samples]
    combined = EpochSampler(samples, 1, 3, "combined")
    assert all(combined.reference_choice(s, 0) == (0, 1, 2) for s in samples)


def test_stream_continues_from_a_saved_position_across_epochs():
    sampler = EpochSampler(_mixed(), 2, 1, "random")
    stream = BatchStream(sampler)
    walked = [stream.next() for _ in range(20)]
    per_epoch = len(sampler.batches(0))
    assert walked[per_epoch].epoch == 1 and walked[per_epoch].index == 0
    resumed = BatchStream(EpochSampler(_mixed(), 2, 1, "random"), Position(walked[9].epoch, walked[9].index))
    assert [resumed.next() for _ in range(11)] == walked[9:]


def test_steps_for_epochs_rounds_up():
    sampler = EpochSampler(_mixed(), 1, 0, "random")
    assert steps_for_epochs(sampler, 2, 1) == 24
    assert steps_for_epochs(sampler, 2, 5) == 5


def _data(samples, captions=("caption 0", "caption 1", "own caption", "")):
    latents = {}
    for s in samples:
        latents[s.target] = torch.full((16, *s.target_shape), float(len(latents)))
        for key, shape in zip(s.references, s.reference_shapes, strict=True):
            latents[key] = torch.full((16, *shape), -float(len(latents)))
    texts = {c: (torch.full((512, 32), float(i)), torch.full((32,), float(i))) for i, c in enumerate(captions)}
    return TrainData(samples, latents.__getitem__, texts.__getitem__, set(texts))


def test_caption_dropout_blanks_the_caption_and_keeps_the_reference():
    samples = [_sample(0), _sample(1)]
    data = _data(samples)
    batch = EpochSampler(samples, 2, 0, "random").batches(0)[0]
    kept, *_ = make_batch(data, batch, Params(caption_dropout_probability=0.0), torch.device("cpu"))
    dropped, *_ = make_batch(data, batch, Params(caption_dropout_probability=1.0), torch.device("cpu"))
    empty = data.load_text("")[0]
    assert all(torch.equal(row, empty) for row in dropped.prompt_embeds)
    assert not any(torch.equal(row, empty) for row in kept.prompt_embeds)
    assert torch.equal(dropped.reference_latents[0], kept.reference_latents[0])
    assert torch.equal(dropped.target_latents, kept.target_latents)


def test_a_picked_reference_set_brings_its_own_caption():
    sample = _sample(0, refs=((8, 8), (8, 8)), ref_captions=["own caption", "not embedded"])
    data = _data([sample])
    sampler = EpochSampler([sample], 1, 0, "random")
    epoch = next(e for e in range(20) if sampler.reference_choice(sample, e) == (0,))
    other = next(e for e in range(20) if sampler.reference_choice(sample, e) == (1,))
    own, *_ = make_batch(data, sampler.batches(epoch)[0], Params(), torch.device("cpu"))
    fallback, *_ = make_batch(data, sampler.batches(other)[0], Params(), torch.device("cpu"))
    assert torch.equal(own.prompt_embeds[0], data.load_text("own caption")[0])
    assert torch.equal(fallback.prompt_embeds[0], data.load_text("caption 0")[0])  # not in the text index
    # the picked set's latents are the ones fed
    assert torch.equal(own.reference_latents[0][0], data.load_latents("r0.0"))
    assert torch.equal(fallback.reference_latents[0][0], data.load_latents("r0.1"))


def test_batch_randomness_is_a_function_of_seed_and_position():
    samples = _mixed()
    sampler = EpochSampler(samples, 2, 0, "random")
    data = _data(samples, captions=[s.caption for s in samples] + [""])
    params = Params(caption_dropout_probability=0.5, flux_guidance_mode="random-range")
    a = make_batch(data, sampler.batches(1)[2], params, torch.device("cpu"))
    b = make_batch(data, sampler.batches(1)[2], params, torch.device("cpu"))
    c = make_batch(data, sampler.batches(1)[3], params, torch.device("cpu"))
    for x, y in zip(a[1:], b[1:], strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[2], c[2])
