import torch
from diffusers import FluxKontextPipeline

from kontext_core.train.kontext_step import (
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
