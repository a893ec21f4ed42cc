"""The model card, read back with huggingface_hub's own parser."""

from __future__ import annotations

from huggingface_hub import ModelCard

from kontext_core.config import params_from_dict
from kontext_core.tracking.model_card import LICENSE, card_facts, render, resolved_revision

COMMIT = "0123456789abcdef0123456789abcdef01234567"
METRICS = {"eval_loss": 0.41, "eval_loss_base": 0.52, "psnr": 18.3, "psnr_base": 15.1, "ssim": 0.6, "ssim_base": 0.5}
PER_PAIR = [{"caption": "make it night"}, {"caption": "invert the colours"}, {"caption": "make it night"}]


def _card(params: dict, tmp_path) -> ModelCard:
    facts = card_facts(params_from_dict(params), tmp_path, METRICS, PER_PAIR, ["a.png", "b.png"], "diffusers-lora")
    return ModelCard(render(facts))


def test_card_of_a_hub_base_names_it_and_its_commit_with_the_flux_dev_licence(tmp_path):
    hub = {"pretrained_model_name_or_path": "black-forest-labs/FLUX.1-Kontext-dev", "revision": COMMIT}
    card = _card(hub, tmp_path)
    data = card.data.to_dict()
    assert data["base_model"] == "black-forest-labs/FLUX.1-Kontext-dev"
    assert data["library_name"] == "diffusers"
    assert {k: data[k] for k in LICENSE} == LICENSE and data["license_name"] == "flux-1-dev-non-commercial-license"
    assert {"flux", "lora", "image-editing"} <= set(data["tags"])
    assert data["instance_prompt"] == "make it night"
    assert data["widget"] == [
        {"text": "make it night", "output": {"url": "images/a.png"}},
        {"text": "invert the colours", "output": {"url": "images/b.png"}},
    ]
    assert COMMIT in card.text
    assert "| eval_loss | 0.41 | 0.52 |" in card.text and "| psnr | 18.3 | 15.1 |" in card.text
    assert "| `lora_rank` |" in card.text and "Non-Commercial License" in card.text
    assert "![a.png](images/a.png)" in card.text


def test_card_of_a_local_base_claims_no_hub_base(tmp_path):
    (tmp_path / "models/base").mkdir(parents=True)
    (tmp_path / "models/base/model_index.json").write_text("{}")
    card = _card({"pretrained_model_name_or_path": "models/base"}, tmp_path)
    assert card.data.to_dict().get("base_model") is None
    assert "`models/base` (content sha256 " in card.text
    assert str(tmp_path) not in card.text  # no absolute path of this machine


def test_a_hub_revision_resolves_through_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants

    refs = tmp_path / "models--org--model/refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert resolved_revision("org/model", None) == COMMIT
    assert resolved_revision("org/model", "v2") is None
    assert resolved_revision("org/other", COMMIT) == COMMIT
