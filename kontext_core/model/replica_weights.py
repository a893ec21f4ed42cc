"""Seeded random weights for a model built on the meta device, written tensor by tensor.

A real-width component (a FLUX double block is ~340M parameters) must not be materialised whole
to write random weights for it: the module is built on the meta device for its names and shapes
only, and each tensor is drawn from a generator seeded by (seed, component, tensor name), cast to
bf16 and written into the current shard. At most one shard (and one float32 tensor being drawn)
is in memory at a time, and a tensor's bytes do not depend on the shard size or on the others.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

WEIGHT_DTYPE = torch.bfloat16
_SAFETENSORS_METADATA = {"format": "pt"}


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.finfo(WEIGHT_DTYPE).bits // 8


def tensor_plan(module: torch.nn.Module) -> list[TensorPlan]:
    """The tensors `save_pretrained` would write: parameters and persistent buffers, each tied
    tensor once (under its first name, as the hub's files hold it), in state-dict order."""
    seen: set[int] = set()
    plan = []
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if not tensor.dtype.is_floating_point:
            raise ValueError(f"replica: {type(module).__name__}.{name} is {tensor.dtype}; only float tensors are drawn")
        plan.append(TensorPlan(name, tuple(tensor.shape)))
    return plan


def _tensor_seed(seed: int, component: str, name: str) -> int:
    digest = hashlib.sha256(f"{seed}/{component}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def draw_tensor(seed: int, component: str, item: TensorPlan) -> torch.Tensor:
    """One tensor's values, a function of (seed, component, name, shape) only.

    1-D weights (norm scales) start at one and 1-D others (biases) at zero, as a fresh model's do;
    matrices and kernels are normal with std 1/sqrt(fan_in), so activations keep their scale
    through the stack and a replica trains and samples without overflowing.
    """
    if len(item.shape) == 1:
        fill = 1.0 if item.name.endswith("weight") or item.name.endswith("scale") else 0.0
        return torch.full(item.shape, fill, dtype=WEIGHT_DTYPE)
    generator = torch.Generator(device="cpu").manual_seed(_tensor_seed(seed, component, item.name))
    fan_in = max(1, math.prod(item.shape[1:]))
    values = torch.randn(item.shape, generator=generator, dtype=torch.float32)
    values.mul_(fan_in**-0.5)
    return values.to(WEIGHT_DTYPE)


def shard_groups(plan: list[TensorPlan], max_shard_bytes: int) -> list[list[TensorPlan]]:
    """Tensors in order, a new shard when the next one would overflow (a tensor larger than the
    limit gets a shard of its own), as huggingface_hub's splitter groups a state dict."""
    groups: list[list[TensorPlan]] = [[]]
    size = 0
    for item in plan:
        if groups[-1] and size + item.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item.nbytes
    return groups


def _draw_group(seed: int, component: str, group: list[TensorPlan]) -> Iterator[tuple[str, torch.Tensor]]:
    for item in group:
        yield item.name, draw_tensor(seed, component, item)


def write_weights(
    out_dir: Path,
    module: torch.nn.Module,
    *,
    seed: int,
    component: str,
    weights_name: str,
    sharded: bool,
    max_shard_bytes: int,
) -> list[str]:
    """Write `module`'s tensors (seeded, bf16) into `out_dir` under the hub's file names.

    `weights_name` is the unsharded file name (`diffusion_pytorch_model.safetensors` or
    `model.safetensors`); a sharded component gets `<stem>-00001-of-0000N.safetensors` files and
    `<weights_name>.index.json` (even with one shard, as the hub's sharded repositories have).
    Returns the file names written.
    """
    plan = tensor_plan(module)
    if not sharded:
        save_file(dict(_draw_group(seed, component, plan)), str(out_dir / weights_name), _SAFETENSORS_METADATA)
        return [weights_name]
    groups = shard_groups(plan, max_shard_bytes)
    stem = weights_name.removesuffix(".safetensors")
    weight_map: dict[str, str] = {}
    files = []
    for number, group in enumerate(groups, start=1):
        file_name = f"{stem}-{number:05d}-of-{len(groups):05d}.safetensors"
        save_file(dict(_draw_group(seed, component, group)), str(out_dir / file_name), _SAFETENSORS_METADATA)
        weight_map.update({item.name: file_name for item in group})
        files.append(file_name)
    index = {
        "metadata": {"total_size": sum(item.nbytes for item in plan)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    index_name = f"{weights_name}.index.json"
    (out_dir / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [*files, index_name]
