"""The model card, read back with huggingface_hub's own parser."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from kontext_core.config import params_from_dict
from kontext_core.hub.cache import set_ref, write_snapshot
from kontext_core.tracking.model_card import LICENSE, card_facts, render

HUB_ID = "black-forest-labs/FLUX.1-Kontext-dev"
METRICS = {"eval_loss": 0.41, "eval_loss_base": 0.52, "psnr": 18.3, "psnr_base": 15.1, "ssim": 0.6, "ssim_base": 0.5}
PER_PAIR = [{"caption": "make it night"}, {"caption": "invert the colours"}, {"caption": "make it night"}]


def _card(params: dict, tmp_path) -> ModelCard:
    facts = card_facts(params_from_dict(params), tmp_path, METRICS, PER_PAIR, ["a.png", "b.png"], "diffusers-lora")
    return ModelCard(render(facts))


@pytest.fixture
def hub_commits(tmp_path, monkeypatch) -> list[str]:
    """Two snapshots of the base in an offline hub cache: `main` names the first, tag `v2` the second."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commits = []
    for text, ref in (("one", "main"), ("two", None)):
        source = tmp_path / f"src-{text}"
        source.mkdir()
        (source / "model_index.json").write_text(f'{{"v": "{text}"}}\n')
        commits.append(write_snapshot(home / "hub", HUB_ID, source, ref=ref))
    set_ref(home / "hub", HUB_ID, "v2", commits[1])
    return commits


def test_card_of_a_hub_base_names_it_and_its_commit_with_the_flux_dev_licence(tmp_path, hub_commits):
    card = _card({"pretrained_model_name_or_path": HUB_ID, "revision": "v2"}, tmp_path)
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
    assert hub_commits[1] in card.text and hub_commits[0] not in card.text
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


def test_the_card_names_the_commit_main_resolves_to(tmp_path, hub_commits):
    card = _card({"pretrained_model_name_or_path": HUB_ID}, tmp_path)
    assert f"`{HUB_ID}` at revision `main` (commit `{hub_commits[0]}`)" in card.text
