"""What `validation_resolution` costs: seconds per denoising step of one Kontext edit, by output size.

Runs FluxKontextPipeline with a 64 px reference, as validation does, at each size, after one
warm-up edit: on `kontext init-model tiny`'s model (random weights, nothing downloaded), or on a
model folder such as a project's models/tiny-kontext (the init stage's wider one):

    python bench/validation_resolution.py [--model DIR] [--sizes 64 128 256 512] [--steps 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusers import FluxKontextPipeline  # noqa: E402
from PIL import Image  # noqa: E402

from kontext_core.model.tiny import save_tiny_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or save_tiny_model(Path(tmp) / "tiny")
        pipe = FluxKontextPipeline.from_pretrained(model)
        pipe.set_progress_bar_config(disable=True)
        reference = Image.new("RGB", (64, 64), "gray")

        def edit(size: int, steps: int) -> None:
            pipe(
                image=reference,
                prompt="make it night",
                height=size,
                width=size,
                max_area=size * size,
                _auto_resize=False,
                num_inference_steps=steps,
                generator=torch.Generator("cpu").manual_seed(0),
            )

        edit(64, 1)  # warm-up: first-call costs are not the size's
        for size in args.sizes:
            start = time.perf_counter()
            edit(size, args.steps)
            seconds = (time.perf_counter() - start) / args.steps
            print(f"validation_resolution {size}x{size}: {seconds:.2f} s per step ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
