import json
import os
import subprocess
import sys

import torch
from diffusers import FluxKontextPipeline

from kontext_core.model.tiny import build_tiny_pipeline, save_tiny_model
from tests.conftest import edit_kwargs


def test_tiny_model_has_kontext_geometry_and_is_deterministic(tmp_path):
    pipe = build_tiny_pipeline(seed=3)
    cfg = pipe.transformer.config
    assert cfg.in_channels == 64 and cfg.guidance_embeds
    assert sum(cfg.axes_dims_rope) == cfg.attention_head_dim
    assert cfg.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert cfg.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae.config.latent_channels == 16 and pipe.vae_scale_factor == 8
    assert pipe.tokenizer.model_max_length == 77
    again = build_tiny_pipeline(seed=3)
    for (name, a), (_, b) in zip(
        pipe.transformer.state_dict().items(), again.transformer.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_tiny_model_loads_through_from_pretrained_and_edits(tmp_path):
    from PIL import Image

    path = save_tiny_model(tmp_path / "tiny", seed=0)
    pipe = FluxKontextPipeline.from_pretrained(path)
    assert not pipe.text_encoder_2.training
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    kwargs = dict(image=image, **edit_kwargs(32))
    first = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images[0]
    second = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images[0]
    assert first.size == (32, 32)
    assert list(first.getdata()) == list(second.getdata())



def test_offline_tokenizers_are_identical_across_processes():
    """Hash-order ties in a BPE trainer would change token ids (and so every embedding) per process."""
    script = (
        "import json\n"
        "from kontext_core.model.tokenizers_offline import build_clip_tokenizer, build_t5_tokenizer\n"
        "p = 'make the red circle blue and sharpen the background'\n"
        "print(json.dumps([build_clip_tokenizer()(p).input_ids, build_t5_tokenizer()(p).input_ids]))\n"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1]
    clip_ids, _ = json.loads(runs[0])
    # Learnt merges: far fewer tokens than the prompt's 51 characters.
    assert len(clip_ids) < 30
