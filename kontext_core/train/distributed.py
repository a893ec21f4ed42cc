"""The process group seen by the loop: rank, world size, gradient averaging (data-parallel).

Under `accelerate launch` accelerate sets up the process group (NCCL on GPUs, gloo on CPUs); the
loop then averages the adapter's gradients across processes after each accumulation window, which
is what DDP does, without wrapping a (possibly quantized) transformer in DDP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    def average(self, value: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return value
        value = value.detach().float().clone()
        dist.all_reduce(value)
        return value / self.world_size

    def broadcast_parameters(self, params: list[torch.nn.Parameter]) -> None:
        """Start every process from the main process's adapter weights."""
        if not self.active:
            return
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def from_accelerate() -> DistContext:
    """The context of this process under `accelerate launch` (a single process without it)."""
    from accelerate import PartialState

    # cpu=True lets accelerate form a gloo group from torchrun's env when there is no GPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    return DistContext(rank=state.process_index, world_size=state.num_processes, device=state.device)
