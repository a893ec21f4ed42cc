"""A FLUX transformer split into parts that can be materialised, quantized and saved one at a time.

The parts are the top-level layers that are not blocks (embedders, final norm and projection) and then
every double and every single block. Each part is handed out as a *view*: a module tree holding only
that part under its full path (`transformer_blocks.3.attn.to_q`), so names seen by quanto's
include/exclude patterns, its quantization map and the state dict are exactly the whole model's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from kontext_core.model.weights import LazyWeights, WeightsError

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")
REST = "embedders and heads"


@dataclass
class Part:
    name: str  # "embedders and heads", "transformer_blocks.3", ...
    view: torch.nn.Module  # the part under its full path; shares modules with the model


def _view_of_block(list_name: str, index: int, block: torch.nn.Module) -> torch.nn.Module:
    holder = torch.nn.Module()
    holder.add_module(str(index), block)
    root = torch.nn.Module()
    root.add_module(list_name, holder)
    return root


def _rest_view(model: torch.nn.Module) -> torch.nn.Module:
    rest = torch.nn.Module()
    for name, child in model.named_children():
        if name not in BLOCK_LISTS:
            rest.add_module(name, child)
    return rest


def model_parts(model: torch.nn.Module) -> Iterator[Part]:
    """The non-block layers first, then each block in model order.

    The generator keeps no reference to a part it has handed out (no local names the module, and
    blocks are looked up by index), so a caller that drops a part frees it before asking for the next.
    """
    yield Part(REST, _rest_view(model))
    for list_name in BLOCK_LISTS:
        for index in range(len(getattr(model, list_name))):
            yield Part(f"{list_name}.{index}", _view_of_block(list_name, index, getattr(model, list_name)[index]))


def part_count(model: torch.nn.Module) -> int:
    return 1 + sum(len(getattr(model, name)) for name in BLOCK_LISTS)


def release_part(model: torch.nn.Module, part: Part) -> None:
    """Drop a finished block from a throwaway skeleton, so its memory goes back before the next one."""
    if part.name == REST:
        for name in list(part.view._modules):
            setattr(model, name, torch.nn.Module())
        return
    list_name, index = part.name.rsplit(".", 1)
    getattr(model, list_name)[int(index)] = torch.nn.Module()


def materialise(part: Part, weights: LazyWeights, dtype: torch.dtype, device: torch.device) -> None:
    """Replace the part's meta tensors by the stored ones, read lazily and cast to `dtype`."""
    names = list(part.view.state_dict())
    tensors = weights.read(names, dtype=dtype)
    if device.type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    part.view.load_state_dict(tensors, strict=True, assign=True)
    left = [n for n, t in [*part.view.named_parameters(), *part.view.named_buffers()] if t.device.type == "meta"]
    if left:
        raise WeightsError(f"{weights.folder}: {part.name} has tensors the weights do not hold: {left[:3]}")
