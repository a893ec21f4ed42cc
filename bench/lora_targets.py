"""LoRA targets at FLUX.1 Kontext [dev]'s real geometry: adapted modules and trainable parameters per
`flux_lora_target` preset, on the full-size transformer (19 double + 38 single blocks, hidden 3072)
built on the meta device (no memory), with the project's own `add_lora` (peft) at rank 16.

    python bench/lora_targets.py            # prints the Markdown table docs/training.md holds

tests/unit/test_lora_targets.py recomputes the table and checks that docs/training.md holds it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run as a script from anywhere

from gpu_step import FULL_CONFIG as FULL_TRANSFORMER_CONFIG  # noqa: E402  (FLUX.1 Kontext [dev]'s config)

RANK = 16


@dataclass(frozen=True)
class TargetCount:
    preset: str
    modules: int
    double_block_modules: int  # per double block
    single_block_modules: int  # per single block
    trainable: int


def count_preset(preset: str, rank: int = RANK, config: dict | None = None) -> TargetCount:
    from diffusers import FluxTransformer2DModel
    from peft.tuners.lora import LoraLayer

    from kontext_core.config import Params
    from kontext_core.model.adapters import add_lora

    with torch.device("meta"):
        model = FluxTransformer2DModel(**(config or FULL_TRANSFORMER_CONFIG))
        trainable = add_lora(model, Params(lora_rank=rank, flux_lora_target=preset, base_model_precision="no_change"))
    adapted = [name for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    return TargetCount(
        preset,
        len(adapted),
        sum(n.startswith("transformer_blocks.0.") for n in adapted),
        sum(n.startswith("single_transformer_blocks.0.") for n in adapted),
        sum(p.numel() for p in trainable),
    )


def presets() -> list[str]:
    from kontext_core.model.adapters import LORA_TARGET_PRESETS

    return list(LORA_TARGET_PRESETS)


def markdown_table(rank: int = RANK) -> str:
    lines = [
        "| `flux_lora_target` | adapted modules | per double block | per single block "
        "| trainable parameters (rank 16) |",
        "|---|---|---|---|---|",
    ]
    for preset in presets():
        c = count_preset(preset, rank)
        lines.append(
            f"| `{c.preset}` | {c.modules} | {c.double_block_modules} | {c.single_block_modules} "
            f"| {c.trainable:,} ({c.trainable / 1e6:.1f} M) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    print(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
