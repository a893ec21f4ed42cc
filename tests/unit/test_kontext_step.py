import torch
from diffusers import FluxKontextPipeline

from kontext_core.model.kontext_step import (
    StepInputs,
    kontext_step,
    pack_latents,
    position_ids,
    reference_ids,
    shift_sigmas,
    unpack_latents,
)


def test_packing_matches_diffusers_pipeline():
    latents = torch.randn(2, 16, 8, 6)
    ours = pack_latents(latents)
    stock = FluxKontextPipeline._pack_latents(latents, 2, 16, 8, 6)
    assert torch.equal(ours, stock)
    assert torch.equal(unpack_latents(ours, 8, 6), latents)


def test_position_ids_match_pipeline_convention():
    stock = FluxKontextPipeline._prepare_latent_image_ids(1, 4, 3, "cpu", torch.float32)
    assert torch.equal(position_ids(4, 3, index=0), stock)
    ref = reference_ids([(4, 3)])
    stock[..., 0] = 1
    assert torch.equal(ref, stock)


def test_two_references_do_not_overlap():
    ids = reference_ids([(2, 2), (2, 3)])
    positions = {tuple(row.tolist()) for row in ids}
    assert len(positions) == ids.shape[0]
    assert ids[:, 0].eq(1).all()


def test_shift_moves_sigmas_toward_noise():
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    shifted = shift_sigmas(sigmas, 3.0)
    assert torch.all(shifted > sigmas)
    assert torch.allclose(shift_sigmas(sigmas, 1.0), sigmas)


class _Recorder(torch.nn.Module):
    """Returns its input so the slicing and target can be checked exactly."""

    def forward(self, hidden_states, **kwargs):
        self.kwargs = kwargs
        self.hidden = hidden_states
        return (hidden_states * 2.0,)


def test_step_concatenates_reference_and_scores_target_tokens_only():
    torch.manual_seed(0)
    x0 = torch.randn(1, 16, 4, 4)
    ref = torch.randn(1, 16, 4, 6)
    noise = torch.randn_like(x0)
    sigma = torch.tensor([0.25])
    inputs = StepInputs(x0, [ref], torch.randn(1, 7, 8), torch.randn(1, 8))
    model = _Recorder()
    out = kontext_step(model, inputs, noise, sigma, guidance=1.0)
    noisy = 0.75 * x0 + 0.25 * noise
    expected_hidden = torch.cat([pack_latents(noisy), pack_latents(ref)], dim=1)
    assert torch.allclose(model.hidden, expected_hidden)
    assert model.kwargs["img_ids"].shape == (4 + 6, 3)
    assert model.kwargs["txt_ids"].abs().sum() == 0
    assert torch.equal(model.kwargs["guidance"], torch.tensor([1.0]))
    prediction = 2.0 * pack_latents(noisy)
    target = pack_latents(noise - x0)
    assert torch.allclose(out.loss, torch.mean((prediction - target) ** 2))


# ----------------------------------------------------------------------------------------------
# one step recomputed by hand on the tiny model, with diffusers' own packing and id helpers

import pytest  # noqa: E402

from kontext_core.config import Params  # noqa: E402
from kontext_core.model.kontext_step import (  # noqa: E402
    flow_loss,
    resolution_shift,
    sample_guidance,
    sample_sigmas,
)


@pytest.fixture(scope="module")
def tiny_pipe():
    from kontext_core.model.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    pipe.transformer.eval()
    return pipe


def _by_hand(transformer, x0, refs, prompt, pooled, noise, sigma, guidance):
    pack, ids = FluxKontextPipeline._pack_latents, FluxKontextPipeline._prepare_latent_image_ids
    b, c, h, w = x0.shape
    s = sigma.view(b, 1, 1, 1)
    tokens = [pack((1 - s) * x0 + s * noise, b, c, h, w)]
    all_ids = [ids(b, h // 2, w // 2, "cpu", torch.float32)]
    col = 0
    for ref in refs:
        rh, rw = ref.shape[2], ref.shape[3]
        tokens.append(pack(ref, b, c, rh, rw))
        ref_ids = ids(b, rh // 2, rw // 2, "cpu", torch.float32)
        ref_ids[:, 0] = 1  # reference tokens: index 1
        ref_ids[:, 2] += col  # side by side, no overlap
        all_ids.append(ref_ids)
        col += rw // 2
    with torch.no_grad():
        out = transformer(
            hidden_states=torch.cat(tokens, dim=1),
            encoder_hidden_states=prompt,
            pooled_projections=pooled,
            timestep=sigma,
            img_ids=torch.cat(all_ids),
            txt_ids=torch.zeros(prompt.shape[1], 3),
            guidance=torch.full((b,), guidance),
            return_dict=False,
        )[0]
    prediction = out[:, : tokens[0].shape[1]]
    target = pack(noise - x0, b, c, h, w)
    return prediction, ((prediction - target) ** 2).mean()


@pytest.mark.parametrize(
    "target_hw, ref_hws",
    [
        ((8, 8), [(8, 8)]),  # one reference (strict pair)
        ((8, 8), [(8, 8), (8, 6)]),  # two references, combined
        ((6, 8), [(10, 4)]),  # a loose pair: reference and target of different sizes
    ],
    ids=["one-reference", "two-references", "loose-pair"],
)
def test_step_matches_a_hand_computed_step_on_the_tiny_model(tiny_pipe, target_hw, ref_hws):
    torch.manual_seed(1)
    b = 2
    x0 = torch.randn(b, 16, *target_hw)
    refs = [torch.randn(b, 16, *hw) for hw in ref_hws]
    prompt, pooled = torch.randn(b, 512, 32), torch.randn(b, 32)
    noise = torch.randn_like(x0)
    sigma = torch.tensor([0.3, 0.8])
    transformer = tiny_pipe.transformer
    expected_pred, expected_loss = _by_hand(transformer, x0, refs, prompt, pooled, noise, sigma, 1.0)
    with torch.no_grad():
        out = kontext_step(transformer, StepInputs(x0, refs, prompt, pooled), noise, sigma, guidance=1.0)
    assert out.prediction.shape == (b, target_hw[0] * target_hw[1] // 4, 64)
    assert torch.allclose(out.prediction, expected_pred, atol=1e-5)
    assert torch.allclose(out.loss, expected_loss, atol=1e-6)
    # The reference tokens matter: without them the prediction changes.
    with torch.no_grad():
        alone = kontext_step(transformer, StepInputs(x0, [], prompt, pooled), noise, sigma, guidance=1.0)
    assert not torch.allclose(alone.prediction, out.prediction, atol=1e-4)


def test_vae_latents_are_normalised_with_the_vae_config(tiny_pipe):
    from PIL import Image

    from kontext_core.cache.vae_cache import encode_image, image_to_tensor

    vae = tiny_pipe.vae.eval()
    img = Image.new("RGB", (32, 32), (200, 30, 90))
    with torch.no_grad():
        raw = vae.encode(image_to_tensor(img)).latent_dist.mode()[0]
    expected = (raw - vae.config.shift_factor) * vae.config.scaling_factor
    assert vae.config.shift_factor != 0 and vae.config.scaling_factor != 1
    assert torch.allclose(encode_image(vae, img), expected, atol=1e-6)


def _params(**kw) -> Params:
    return Params(**kw)


def test_logit_normal_sigmas_follow_scale_and_shift():
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = sample_sigmas(4000, _params(flow_schedule_shift=1.0), 256, gen())
    assert 0.45 < plain.median() < 0.55 and plain.min() > 0 and plain.max() < 1
    wide = sample_sigmas(4000, _params(flow_schedule_shift=1.0, flow_sigmoid_scale=3.0), 256, gen())
    assert wide.std() > plain.std() * 1.5
    shifted = sample_sigmas(4000, _params(flow_schedule_shift=3.0), 256, gen())
    assert torch.allclose(shifted, shift_sigmas(plain, 3.0))


def test_uniform_and_resolution_dependent_shift():
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    uniform = sample_sigmas(4000, _params(flow_use_uniform_schedule=True, flow_schedule_shift=1.0), 256, gen())
    assert abs(float((uniform < 0.25).float().mean()) - 0.25) < 0.03
    assert resolution_shift(256) == pytest.approx(2.718281828**0.5)
    assert resolution_shift(4096) == pytest.approx(2.718281828**1.15)
    auto = _params(flow_schedule_auto_shift=True, flow_schedule_shift=1.0)
    small, large = sample_sigmas(2000, auto, 16, gen()), sample_sigmas(2000, auto, 4096, gen())
    assert large.mean() > small.mean()  # bigger images: more noise


def test_guidance_constant_or_random_range():
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_guidance(3, _params(), gen), torch.ones(3))
    assert torch.equal(sample_guidance(2, _params(flux_guidance_value=2.5), gen), torch.full((2,), 2.5))
    ranged = sample_guidance(
        500, _params(flux_guidance_mode="random-range", flux_guidance_min=1.5, flux_guidance_max=3.0), gen
    )
    assert ranged.min() >= 1.5 and ranged.max() <= 3.0 and ranged.std() > 0.3


def test_loss_types():
    pred, target = torch.tensor([0.0, 0.01, 5.0]), torch.zeros(3)
    assert torch.allclose(flow_loss(pred, target, "mse"), (pred**2).mean())
    c = 0.1
    huber = flow_loss(pred[:2], target[:2], "huber", c)
    assert torch.allclose(huber, (pred[:2] ** 2).mean(), rtol=0.01)  # quadratic for small residuals
    big = flow_loss(pred[2:], target[2:], "smooth_l1", c)
    assert big.item() == pytest.approx(2 * 5.0, rel=0.03)  # linear for large residuals
    with pytest.raises(ValueError, match="loss_type"):
        flow_loss(pred, target, "l3")
