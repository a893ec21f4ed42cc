"""Batched cache stages write deterministic bytes: text embeds identical to one caption at a time,
VAE latents identical whatever was cached before (a resumed run equals a fresh one), batch 1 identical
to the one-image encode, and batched latents within float rounding of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from kontext_core.stages import run_stage
from tests.conftest import make_project, write_params


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.rglob("*.safetensors"))}


def _project(tmp_path: Path) -> Path:
    params_file = make_project(tmp_path / "project", sample_data={"seed": 0, "count": 5, "size": 64})
    for name in ("init", "fetch", "pair", "degrade"):
        run_stage(name, params_file)
    return params_file


def test_cache_batches_write_deterministic_bytes(tmp_path):
    from diffusers import AutoencoderKL, FluxKontextPipeline

    from kontext_core.cache.store import TensorStore
    from kontext_core.cache.text_cache import encode_caption, sequence_length
    from kontext_core.cache.vae_cache import encode_image
    from kontext_core.config import load_params
    from kontext_core.data.buckets import apply_crop, resize_and_crop
    from kontext_core.data.sources import open_ref
    from kontext_core.stages.cache_vae import _crop_of

    params_file = _project(tmp_path)
    project = params_file.parent
    latents_dir = project / "cache/vae/latents"
    run_stage("cache_vae", params_file)
    first = _files(latents_dir)
    pairs = json.loads((project / "data/pair/pairs.json").read_text())
    images = {(p["target"], json.dumps(_crop_of(p))) for p in pairs}
    images |= {(r["image"], json.dumps(_crop_of(r))) for p in pairs for r in p["references"]}
    # Several buckets (the sample data has more than one size), so some batches are padded.
    batch = load_params(params_file).vae_batch_size
    assert batch > 1 and len(first) == len(images) > batch

    # A resumed run (every other entry lost) encodes them in other batches: the same bytes.
    for name in list(first)[::2]:
        next(latents_dir.rglob(name)).unlink()
    run_stage("cache_vae", params_file, force=True)
    assert _files(latents_dir) == first

    # Batch 1 is the one-image encode, bit for bit; batched latents are within float rounding of it.
    vae = AutoencoderKL.from_pretrained(project / "models/tiny-kontext", subfolder="vae").eval()
    store = TensorStore(latents_dir)
    index = json.loads((project / "cache/vae/index.json").read_text())
    batched = {p["pair_id"]: store.get(index[p["pair_id"]]["target"])["latents"] for p in pairs}
    # SimpleTuner's vae_batch_size acts: 1 encodes one image per call, under other cache keys.
    write_params(params_file, vae_batch_size=1)
    shutil.rmtree(project / "cache/vae")
    assert not run_stage("cache_vae", params_file)["skipped"]
    single = json.loads((project / "cache/vae/index.json").read_text())
    for pair in pairs:
        plan = _crop_of(pair)
        img = open_ref(pair["target"], project)
        img = resize_and_crop(img, tuple(plan["size"])) if plan.get("centre") else apply_crop(img, plan)
        fresh = encode_image(vae, img)
        one = store.get(single[pair["pair_id"]]["target"])["latents"]
        assert torch.equal(one, fresh)
        assert torch.allclose(batched[pair["pair_id"]], fresh, rtol=0, atol=1e-5)

    # Text: a batch's rows are bit-identical to one caption at a time, so the files are too.
    run_stage("cache_text", params_file)
    index = json.loads((project / "cache/text/index.json").read_text())
    assert len(index) > 2
    pipe = FluxKontextPipeline.from_pretrained(project / "models/tiny-kontext", transformer=None, vae=None)
    pipe.text_encoder.eval()
    pipe.text_encoder_2.eval()
    reference = TensorStore(tmp_path / "one-by-one")
    for caption, key in index.items():
        reference.put(key, encode_caption(pipe, caption, sequence_length(load_params(params_file))))
    assert _files(tmp_path / "one-by-one") == _files(project / "cache/text/embeds")


def test_token_id_encoding_equals_encode_prompt_and_reports_cut_captions(built_project):
    """cache_text tokenizes a block of captions at once and calls the encoders on the ids, a batch at a
    time: each batch's rows are bit-identical to diffusers' `encode_prompt` on that batch, cut
    captions included, whatever block the ids were tokenized in."""
    from diffusers import FluxKontextPipeline

    from kontext_core.cache.text_cache import cut_captions, encode_captions, encode_token_ids, tokenize_captions

    pipe = FluxKontextPipeline.from_pretrained(built_project / "models/tiny-kontext", transformer=None, vae=None)
    pipe.text_encoder.eval()
    pipe.text_encoder_2.eval()
    long = "a red fox jumps over the lazy dog near a river bank " * 12
    captions = ["", "make the sky purple", long, "café 字 — émoji-free, punctuated!"]
    for length in (16, 64):
        clip_ids, t5_ids = tokenize_captions(pipe, captions, length)
        assert t5_ids.shape == (4, length) and clip_ids.shape == (4, pipe.tokenizer_max_length)
        for start, stop in ((0, 2), (2, 4), (0, 4)):
            rows = encode_token_ids(pipe, clip_ids[start:stop], t5_ids[start:stop])
            assert len(rows) == stop - start
            with torch.no_grad():
                embeds, pooled, _ = pipe.encode_prompt(
                    prompt=captions[start:stop], prompt_2=captions[start:stop], max_sequence_length=length
                )
            for i, row in enumerate(rows):
                assert torch.equal(row["prompt_embeds"], embeds[i].float())
                assert torch.equal(row["pooled_prompt_embeds"], pooled[i].float())
        assert all(
            torch.equal(a[name], b[name])
            for a, b in zip(encode_captions(pipe, captions, length), rows, strict=True)
            for name in a
        )
        over_t5 = [c for c in captions if len(pipe.tokenizer_2(c).input_ids) > length]
        assert long in over_t5 and "" not in over_t5
        assert cut_captions(pipe, captions, length) == {"clip": [long], "t5": over_t5}
